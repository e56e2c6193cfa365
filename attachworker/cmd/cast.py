"""attachworker-cast: cast an attach, detach or extend to a compute host, optionally wait.

    attachworker-cast [--config-file F] attach --host H --instance UUID --volume UUID
                      [--mountpoint /dev/vdb] [--mode rw|ro] [--attachment-id UUID]
                      [--wait SECONDS]
    attachworker-cast [--config-file F] detach --host H --instance UUID --volume UUID
                      [--attachment-id UUID] [--wait SECONDS]
    attachworker-cast [--config-file F] extend --host H --instance UUID --volume UUID
                      [--new-size GIB] [--wait SECONDS]

Credentials come from the usual ``OS_*`` environment (or ``--os-*`` flags), loaded
by keystoneauth1; the caller's token, ids, roles and catalog go in the context so
Cinder judges the request as the caller's. With ``--wait`` the outcome notification
is printed as JSON; exit status 0 on ``.end``, 1 on ``.error``, 2 on timeout, 3 when
the caller cannot authenticate or the broker cannot be reached, or when
``[upgrade_levels] compute`` is older than the cast needs (nothing is sent).
"""
import argparse
import json
import sys
from typing import List
from typing import Optional

from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import loading as ks_loading
from kombu import exceptions as kombu_exc
from oslo_config import cfg
import oslo_messaging as messaging

from attachworker import config
from attachworker import context as aw_context
from attachworker import outcome
from attachworker import rpc
from attachworker import rpcapi

EXIT_END, EXIT_ERROR, EXIT_TIMEOUT, EXIT_USAGE = 0, 1, 2, 3
#: Connection attempts to the broker before giving up (a service retries forever).
BROKER_RETRY = 2


def build_parser(argv: List[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='attachworker-cast', description=__doc__.split('\n')[0])
    parser.add_argument('--config-file', action='append', default=[],
                        help='oslo.config file with [DEFAULT] transport_url (repeatable)')
    ks_loading.register_session_argparse_arguments(parser)
    ks_loading.register_auth_argparse_arguments(parser, argv, default='password')
    sub = parser.add_subparsers(dest='action', required=True)
    attach = sub.add_parser('attach', help='cast attach_volume to a host')
    attach.add_argument('--host', required=True, help='the compute host ([DEFAULT] host)')
    attach.add_argument('--instance', required=True, help='instance UUID')
    attach.add_argument('--volume', required=True, help='Cinder volume UUID')
    attach.add_argument('--mountpoint', help='device name, e.g. /dev/vdb (default: next free)')
    attach.add_argument('--mode', default='rw', choices=['rw', 'ro'])
    attach.add_argument('--attachment-id', help='an attachment the caller already reserved')
    attach.add_argument('--availability-zone', help="the instance's availability zone")
    attach.add_argument('--wait', type=float, metavar='SECONDS',
                        help='wait for the outcome notification and print it')
    detach = sub.add_parser('detach', help='cast detach_volume to a host')
    detach.add_argument('--host', required=True, help='the compute host ([DEFAULT] host)')
    detach.add_argument('--instance', required=True, help='instance UUID')
    detach.add_argument('--volume', required=True, help='Cinder volume UUID')
    detach.add_argument('--attachment-id', help='which attachment, if several')
    detach.add_argument('--wait', type=float, metavar='SECONDS',
                        help='wait for the outcome notification and print it')
    extend = sub.add_parser('extend', help='cast extend_volume to a host, after Cinder '
                                           'extended the attached volume')
    extend.add_argument('--host', required=True, help='the compute host ([DEFAULT] host)')
    extend.add_argument('--instance', required=True, help='instance UUID')
    extend.add_argument('--volume', required=True, help='Cinder volume UUID')
    extend.add_argument('--new-size', type=int, metavar='GIB',
                        help='the size the caller expects (advisory: the host reads it '
                             'from Cinder)')
    extend.add_argument('--wait', type=float, metavar='SECONDS',
                        help='wait for the outcome notification and print it')
    return parser


def caller_context(args: argparse.Namespace) -> aw_context.RequestContext:
    """The caller's token, ids and catalog, from keystoneauth1."""
    auth = ks_loading.load_auth_from_argparse_arguments(args)
    session = ks_loading.load_session_from_argparse_arguments(args, auth=auth)
    access = auth.get_access(session)
    return aw_context.RequestContext(
        auth_token=access.auth_token, user_id=access.user_id,
        project_id=access.project_id, roles=access.role_names,
        service_catalog=access.service_catalog.catalog)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv if argv is None else argv
    args = build_parser(argv[1:]).parse_args(argv[1:])
    conf = cfg.CONF
    config.parse_args(conf, ['attachworker-cast']
                      + [a for f in args.config_file for a in ('--config-file', f)],
                      'attachworker-cast')
    try:
        ctxt = caller_context(args)
    except (ks_exc.ClientException, ks_exc.MissingRequiredOptions) as exc:
        print('attachworker-cast: cannot authenticate: %s' % exc, file=sys.stderr)
        return EXIT_USAGE
    instance = {'uuid': args.instance, 'project_id': ctxt.project_id,
                'user_id': ctxt.user_id}
    if getattr(args, 'availability_zone', None):
        instance['availability_zone'] = args.availability_zone
    transport = rpc.get_rpc_transport(conf)
    api = rpcapi.ComputeAPI(conf, transport, retry=BROKER_RETRY)

    def cast() -> None:
        if args.action == 'attach':
            mountpoint = args.mountpoint
            if mountpoint is None and api.client.can_send_version('1.2'):
                # as Nova's conductor: ask the host for the device first (a call)
                mountpoint = api.reserve_block_device_name(
                    ctxt, args.host, instance, args.volume,
                    timeout=args.wait or rpcapi.CALL_TIMEOUT)
                print('reserved %s on host %s' % (mountpoint, args.host), file=sys.stderr)
            api.attach_volume(ctxt, args.host, instance, args.volume,
                              mountpoint=mountpoint, mode=args.mode,
                              attachment_id=args.attachment_id)
        elif args.action == 'detach':
            api.detach_volume(ctxt, args.host, instance, args.volume,
                              attachment_id=args.attachment_id)
        else:
            api.extend_volume(ctxt, args.host, instance, args.volume,
                              new_size=args.new_size)
        print('cast %s_volume to host %s: request %s' % (args.action, args.host,
                                                        ctxt.request_id), file=sys.stderr)

    try:
        if args.wait is None:
            cast()
            return EXIT_END
        with outcome.OutcomeWatcher(conf) as watcher:
            cast()
            note = watcher.wait(ctxt.request_id, args.wait, on_event=lambda n: print(
                'received %s' % n.get('event_type'), file=sys.stderr))
    except messaging.RPCVersionCapError as exc:
        print('attachworker-cast: not sent: %s_volume needs RPC version %s and '
              '[upgrade_levels] compute is %s' % (args.action, exc.version, exc.version_cap),
              file=sys.stderr)
        return EXIT_USAGE
    except messaging.RemoteError as exc:
        print('attachworker-cast: host %s refused the device reservation: %s: %s'
              % (args.host, exc.exc_type, exc.value), file=sys.stderr)
        return EXIT_ERROR
    except messaging.MessagingTimeout:
        print('attachworker-cast: host %s did not answer the device reservation'
              % args.host, file=sys.stderr)
        return EXIT_TIMEOUT
    except (messaging.MessageDeliveryFailure, OSError, kombu_exc.OperationalError) as exc:
        print('attachworker-cast: cannot reach the message broker (%s): %s'
              % (rpc.brokers(conf), exc), file=sys.stderr)
        return EXIT_USAGE
    finally:
        transport.cleanup()
    if note is None:
        print('no outcome for request %s within %s s' % (ctxt.request_id, args.wait),
              file=sys.stderr)
        return EXIT_TIMEOUT
    print(json.dumps(note, indent=2, sort_keys=True))
    return EXIT_END if note['event_type'].endswith('.end') else EXIT_ERROR


if __name__ == '__main__':
    sys.exit(main())

"""attachworker-manage: administer this compute host.

    attachworker-manage --config-file F connector
    attachworker-manage --config-file F journal list [--state running] [--limit 50]
    attachworker-manage --config-file F journal show OP_OR_REQUEST_ID
    attachworker-manage --config-file F reconcile
    attachworker-manage --config-file F volume_attachment show INSTANCE VOLUME
    attachworker-manage --config-file F volume_attachment get_connector
    attachworker-manage --config-file F volume_attachment refresh INSTANCE VOLUME \
        [--connector FILE]

Each sub-command is one entry in ``COMMANDS``: its help, a function adding its
arguments (or nested sub-commands, e.g. ``journal list|show``) to its parser, and
the handler ``handler(conf) -> exit code``. Parsed arguments are read back from
``conf.command``: ``conf.command.name`` and ``conf.command.<dest>``.
"""
import json
import sys
import time
from typing import Callable
from typing import NamedTuple
from typing import Optional

from oslo_config import cfg
from oslo_log import log as logging

from attachworker import config
from attachworker import connector
from attachworker import exception
from attachworker import rpc
from attachworker import virt
from attachworker.cinder import CinderAPI
from attachworker.cmd import volume_attachment
from attachworker.notifications import Notifier
from attachworker.worker.journal import Journal
from attachworker.worker.outbox import Outbox
from attachworker.worker.recovery import Recovery

LOG = logging.getLogger(__name__)


class Command(NamedTuple):
    help: str
    add_arguments: Callable  # (argparse parser) -> None
    handler: Callable[[cfg.ConfigOpts], int]


def _no_arguments(parser) -> None:
    pass


def connector_show(conf: cfg.ConfigOpts) -> int:
    """Print the connector properties this host sends to Cinder, as sorted JSON."""
    props = connector.get_connector_properties(conf)
    print(json.dumps(props, indent=2, sort_keys=True))
    return 0


def _journal_arguments(parser) -> None:
    sub = parser.add_subparsers(dest='journal_action', required=True)
    listing = sub.add_parser('list', help='operations, newest first')
    listing.add_argument('--state', action='append',
                         help='running, completed, failed, undone, undo_failed, recovered')
    listing.add_argument('--limit', type=int, default=50)
    show = sub.add_parser('show', help='one operation and its steps')
    show.add_argument('key', help='operation id or request id')


def _when(epoch: float) -> str:
    return time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(epoch)) + '.%03d' % (
        (epoch % 1) * 1000)


def _table(headers: list, rows: list) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = ['  '.join(str(v).ljust(w) for v, w in zip(r, widths, strict=True))
             for r in [headers] + rows]
    lines.insert(1, '  '.join('-' * w for w in widths))
    return '\n'.join(line.rstrip() for line in lines)


def journal_command(conf: cfg.ConfigOpts) -> int:
    """Show what the journal holds (read-only; safe while the worker runs)."""
    journal = Journal(conf.state_path)
    if conf.command.journal_action == 'list':
        ops = journal.list(tuple(conf.command.state or ()) or None, conf.command.limit)
        print(_table(['created (UTC)', 'request id', 'action', 'state', 'last step',
                      'volume', 'instance'],
                     [[_when(o['created_at']), o['request_id'] or '-', o['action'], o['state'],
                       '%s (%s)' % (o['last_step'], o['step_state']) if o['last_step']
                       else '-', o['fields'].get('volume_id') or '-',
                       o['fields'].get('instance_uuid') or '-'] for o in ops]))
        print('%d operation(s)' % len(ops))
        parked = journal.parked()
        if parked:
            print()
            print(_table(['parked notification', 'event', 'request id', 'tries',
                          'last error'],
                         [[p['id'], 'instance.%s.%s' % (p['action'], p['phase']),
                           p['request_id'] or '-', p['attempts'], p['last_error'] or '-']
                          for p in parked]))
            print('%d notification(s) parked: they could not be published and are not '
                  'retried' % len(parked))
        return 0
    op = journal.get(conf.command.key)
    if op is None:
        print('No operation %s in %s' % (conf.command.key, journal.path), file=sys.stderr)
        return 1
    for key in ('op_id', 'request_id', 'action', 'state', 'owner'):
        print('%-12s %s' % (key, op[key]))
    print('%-12s %s' % ('fields', json.dumps(op['fields'], sort_keys=True)))
    print()
    print(_table(['time (UTC)', 'step', 'state'],
                 [[_when(s['at']), s['step'], s['state']] for s in journal.steps(op['op_id'])]))
    stack = journal.stack(op['op_id'])
    if stack:
        print()
        print(_table(['undo', 'kind', 'of step', 'state', 'arguments'],
                     [[e['name'], e['kind'], e['step'], e['state'],
                       json.dumps(e['args'], sort_keys=True)] for e in stack]))
    return 0


def reconcile_command(conf: cfg.ConfigOpts) -> int:
    """Recover what a dead worker left unfinished, now; publish queued notifications."""
    transport = rpc.get_notification_transport(conf)
    try:
        outbox = Outbox(Journal(conf.state_path), Notifier(transport, conf.host))
        recovery = Recovery(conf, CinderAPI(conf), virt.load_driver(conf), outbox)
        counts = recovery.run()
        sent = outbox.flush()
    finally:
        transport.cleanup()
    print('reconciled: %s; %d queued notification(s) published' % (
        ', '.join('%d %s' % (n, o) for o, n in sorted(counts.items())) or 'nothing to do',
        sent))
    return 0


COMMANDS: dict[str, Command] = {
    'connector': Command('Show the host connector properties sent to Cinder.',
                         _no_arguments, connector_show),
    'journal': Command('Inspect the journal of operations.', _journal_arguments,
                       journal_command),
    'reconcile': Command('Finish or undo operations a dead worker left unfinished.',
                         _no_arguments, reconcile_command),
    'volume_attachment': Command('One attachment as this host and Cinder see it.',
                                 volume_attachment.add_arguments, volume_attachment.run),
}


def _add_command_parsers(subparsers) -> None:
    for name, command in COMMANDS.items():
        parser = subparsers.add_parser(name, help=command.help)
        command.add_arguments(parser)


command_opt = cfg.SubCommandOpt('command', title='Commands',
                                handler=_add_command_parsers,
                                help='Available commands')


def run(conf: cfg.ConfigOpts, argv: Optional[list[str]] = None) -> int:
    """Parse ``argv`` into ``conf`` and run the chosen command; the exit code."""
    conf.register_cli_opt(command_opt)
    config.parse_args(conf, ['attachworker-manage'] + list(argv or []), 'attachworker-manage')
    try:
        return COMMANDS[conf.command.name].handler(conf)
    except exception.AttachWorkerException as exc:
        # Expected operator errors (bad host_root...): a message, not a traceback.
        print('Error: %s' % exc, file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - a message, and the traceback in the log
        LOG.exception('attachworker-manage %s failed', conf.command.name)
        print('Unexpected error (the traceback is in the log): %s' % exc, file=sys.stderr)
        return 1


def main() -> None:
    sys.exit(run(cfg.CONF, sys.argv[1:]))

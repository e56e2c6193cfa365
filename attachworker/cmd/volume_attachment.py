"""``attachworker-manage volume_attachment``: one attachment as the host and Cinder
each see it, as ``nova-manage volume_attachment`` does for Nova.

    attachworker-manage --config-file F volume_attachment show INSTANCE VOLUME
    attachworker-manage --config-file F volume_attachment get_connector
    attachworker-manage --config-file F volume_attachment refresh INSTANCE VOLUME \
        [--connector FILE]

``show`` prints the virt driver's record and Cinder's attachment side by side and
flags every mismatch; its exit status is 0 when they agree, 2 when they do not (1
when it cannot tell: a bad argument, Cinder unreachable). Cinder is asked with the
``[cinder]`` service credentials.

``refresh`` replaces the volume's Cinder attachment by one made with this host's
connector of today (or the one in FILE, which must name this host) and gives the
instance's disk the new connection info (attachworker.refresh): journalled,
locked and notified like a cast. The instance must be stopped. Exit status as
``nova-manage volume_attachment refresh``'s: see ``refresh_command``.
"""
import json
from typing import Any
from typing import Optional

from oslo_config import cfg

from attachworker import connector
from attachworker import context as aw_context
from attachworker import exception
from attachworker import validation
from attachworker import virt
from attachworker.cinder import CinderAPI

#: (label, host record key, Cinder key)
ROWS = [('attached', 'attached', 'attached'), ('attachment id', 'attachment_id',
                                                'attachment_id'),
        ('device', 'mountpoint', 'device'), ('mode', 'mode', 'attach_mode'),
        ('flow', 'flow', None), ('status', None, 'status')]


def add_arguments(parser: Any) -> None:
    sub = parser.add_subparsers(dest='attachment_action', required=True)
    show = sub.add_parser('show', help='the host and Cinder side by side')
    show.add_argument('instance', help='instance UUID')
    show.add_argument('volume', help='volume UUID')
    sub.add_parser('get_connector', help="this host's connector, as JSON")
    refresh = sub.add_parser('refresh', help='a new Cinder attachment with the connector '
                             'of today, and its connection info to the instance')
    refresh.add_argument('instance', help='instance UUID (stopped)')
    refresh.add_argument('volume', help='volume UUID')
    refresh.add_argument('--connector', metavar='FILE', dest='connector_file',
                         help="a connector as JSON (get_connector's output); default: "
                         "this host's connector now")


def _host_side(driver: Any, instance_uuid: str, volume_id: str) -> dict:
    for held in driver.get_attachments(instance_uuid):
        if held['volume_id'] == volume_id:
            return dict(held, attached=True)
    return {'attached': False}


def _cinder_side(conf: cfg.ConfigOpts, instance_uuid: str, volume_id: str) -> dict:
    cinder = CinderAPI(conf).client(aw_context.get_admin_context())
    volume = cinder.get(volume_id)
    side: dict = {'attached': False, 'status': volume['status']}
    for att in volume['attachments']:
        if att.get('server_id') == instance_uuid:
            side.update(attached=True, attachment_id=att.get('attachment_id'),
                        device=att.get('device'))
    if side.get('attachment_id'):
        try:
            shown = cinder.attachment_get(side['attachment_id'])
        except exception.AttachmentNotFound:
            shown = {}
        side.update(attach_mode=shown.get('attach_mode'),
                    status='%s (attachment %s)' % (volume['status'], shown.get('status')))
    return side


def mismatches(host: dict, cinder: dict) -> list:
    """What the host and Cinder disagree on, in words."""
    found = []
    if host['attached'] != cinder['attached']:
        found.append('attached on the host but not in Cinder' if host['attached']
                     else 'attached in Cinder but not on this host')
        return found
    if not host['attached']:
        return found
    for label, host_key, cinder_key in ROWS[1:4]:
        mine, theirs = host.get(host_key), cinder.get(cinder_key)
        if mine and theirs and mine != theirs:
            found.append('%s: %s on the host, %s in Cinder' % (label, mine, theirs))
    if 'attachment attached' not in str(cinder.get('status')) and cinder.get('attachment_id'):
        found.append('the Cinder attachment is not attached: %s' % cinder.get('status'))
    return found


def _cell(value: Optional[Any]) -> str:
    return '-' if value is None else str(value)


def run(conf: cfg.ConfigOpts) -> int:
    if conf.command.attachment_action == 'get_connector':
        print(json.dumps(connector.get_connector_properties(conf), indent=2,
                         sort_keys=True))
        return 0
    if conf.command.attachment_action == 'refresh':
        from attachworker.cmd import volume_refresh
        return volume_refresh.run(conf)
    limit = conf.worker.max_argument_length
    instance_uuid = validation.uuid_argument('INSTANCE', conf.command.instance, limit)
    volume_id = validation.uuid_argument('VOLUME', conf.command.volume, limit)
    host = _host_side(virt.load_driver(conf), instance_uuid, volume_id)
    cinder = _cinder_side(conf, instance_uuid, volume_id)
    width = max(len(label) for label, _, _ in ROWS)
    print('%-*s  %-38s  %s' % (width, '', 'this host (%s)' % conf.host, 'Cinder'))
    for label, host_key, cinder_key in ROWS:
        print('%-*s  %-38s  %s' % (width, label, _cell(host.get(host_key) if host_key
                                                      else None),
                                   _cell(cinder.get(cinder_key) if cinder_key else None)))
    found = mismatches(host, cinder)
    for problem in found:
        print('MISMATCH: %s' % problem)
    if not found:
        print('consistent')
    return 2 if found else 0

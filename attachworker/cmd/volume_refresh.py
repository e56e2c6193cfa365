"""``attachworker-manage volume_attachment refresh INSTANCE VOLUME [--connector FILE]``.

Runs attachworker.refresh in this process, through a ComputeManager of its own
over the host's journal, locks and notification transport: a refresh is
journalled, serialised with the worker's casts of the instance and the volume,
and notified (``instance.volume_refresh.*``) like a cast. One the refresh could
not finish once Cinder had let go of the old attachment stays ``undo_failed`` in
the journal; the worker's recovery (or ``attachworker-manage reconcile``)
finishes it.

Exit status, as ``nova-manage volume_attachment refresh``'s:
0 done; 1 anything else (see the message); 2 the connector file does not exist;
3 it cannot be read as a connector; 4 no such instance on this host; 5 the
instance is not stopped; 6 the volume is not attached to the instance (here and
in Cinder, with one attachment); 7 the connector is not this host's.
"""
import json
import os
import sys
from typing import Any
from typing import Optional

from oslo_config import cfg

from attachworker import connector as aw_connector
from attachworker import context as aw_context
from attachworker import exception
from attachworker import rpc
from attachworker import validation
from attachworker import virt
from attachworker.cinder import CinderAPI
from attachworker.manager import ComputeManager
from attachworker.notifications import Notifier
from attachworker.worker.journal import Journal
from attachworker.worker.outbox import Outbox


class _Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


#: Largest connector file read (get_connector's output is well under 2 KiB).
MAX_CONNECTOR_BYTES = 64 * 1024


def _no_constant(name: str) -> None:
    raise ValueError('%s is not a connector value' % name)


def _plain(value: object) -> bool:
    """A value os-brick's connector properties can have: no floats, no objects."""
    if isinstance(value, list):
        return all(isinstance(v, str) for v in value)
    return value is None or isinstance(value, (str, bool, int))


def read_connector(path: str, own: dict) -> dict:
    """The connector in ``path``: a JSON object naming this host, each value of the
    kind this host's own connector has for the same key. It reaches Cinder only after
    the old attachment is gone, so everything about it is checked first."""
    if not os.path.exists(path):
        raise _Refused(2, 'Connector file not found at %s' % path)
    if not os.path.isfile(path):
        raise _Refused(3, '%s is not a regular file' % path)
    try:
        with open(path, 'rb') as f:
            raw = f.read(MAX_CONNECTOR_BYTES + 1)
        if len(raw) > MAX_CONNECTOR_BYTES:
            raise ValueError('more than %d bytes' % MAX_CONNECTOR_BYTES)
        given = json.loads(raw, parse_constant=_no_constant)
    except (OSError, ValueError, RecursionError) as exc:
        raise _Refused(3, 'Failed to read %s as a connector: %s' % (path, exc)) from exc
    if not isinstance(given, dict) or not isinstance(given.get('host'), str):
        raise _Refused(3, '%s holds no connector (a JSON object with a "host"): run '
                       '"attachworker-manage volume_attachment get_connector"' % path)
    for key, value in given.items():
        mine = own.get(key)
        if not _plain(value) or (mine is not None and value is not None
                                 and type(value) is not type(mine)):
            raise _Refused(3, '%s: %r is not a connector value for %r (this host has %s)'
                           % (path, value, key, type(mine).__name__ if mine is not None
                              else 'none'))
    if given['host'] != own.get('host'):
        raise _Refused(7, 'The connector in %s is for host %r, this host is %r: it was '
                       'made on another host' % (path, given['host'], own.get('host')))
    return given


def exit_code(exc: Optional[BaseException]) -> int:
    if exc is None:
        return 0
    if isinstance(exc, exception.InstanceNotStopped):
        return 5
    if isinstance(exc, exception.VolumeNotRefreshable):
        return 6
    if isinstance(exc, exception.InstanceNotFound):
        return 4
    return 1


def _manager(conf: cfg.ConfigOpts, journal: Journal, transport: Any) -> ComputeManager:
    return ComputeManager(conf, CinderAPI(conf), virt.load_driver(conf),
                          Outbox(journal, Notifier(transport, conf.host)),
                          lambda: aw_connector.get_connector_properties(conf))


def run(conf: cfg.ConfigOpts) -> int:
    args = conf.command
    limit = conf.worker.max_argument_length
    instance_uuid = validation.uuid_argument('INSTANCE', args.instance, limit)
    volume_id = validation.uuid_argument('VOLUME', args.volume, limit)
    try:
        given = None
        if args.connector_file:
            given = read_connector(args.connector_file,
                                   aw_connector.get_connector_properties(conf))
    except _Refused as refused:
        print(refused, file=sys.stderr)
        return refused.code
    transport = rpc.get_notification_transport(conf)
    journal = Journal(conf.state_path)
    try:
        manager = _manager(conf, journal, transport)
        ctxt = aw_context.get_admin_context()
        op = manager.refresh_connection(ctxt, instance_uuid, volume_id, given)
        manager.retry_unjournalled()
    finally:
        journal.close()
        transport.cleanup()
    state, exc = op.ended if op is not None and op.ended else ('failed', None)
    fields = op.fields if op is not None else {}
    if exc is None and state == 'completed':
        print('Refreshed: volume %s of instance %s now has attachment %s (was %s), %s at %s '
              '(request %s)' % (volume_id, instance_uuid, fields.get('attachment_id'),
                                fields.get('old_attachment_id'),
                                fields.get('driver_volume_type'), fields.get('mountpoint'),
                                fields.get('request_id')))
        return 0
    print('Not refreshed (%s, request %s): %s' % (state, fields.get('request_id'), exc),
          file=sys.stderr)
    if state == 'undo_failed':
        print('Cinder has let go of attachment %s: the worker\'s recovery (or '
              '"attachworker-manage reconcile") finishes the refresh with attachment %s; '
              'see "attachworker-manage journal show %s"'
              % (fields.get('old_attachment_id'), fields.get('attachment_id'),
                 fields.get('request_id')), file=sys.stderr)
    # past Cinder's point of no return nothing is "unchanged": never 5 or 6 then
    return 1 if state == 'undo_failed' else exit_code(exc)

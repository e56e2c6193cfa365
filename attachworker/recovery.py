"""Finishing or undoing operations a dead worker left unfinished.

Runs at start-up before the worker consumes, every ``[worker] reconcile_interval``
seconds, and on demand (``attachworker-manage reconcile``). It takes only
operations whose owner process is gone (and those whose undo failed earlier), so
it never races a live worker.

Calls go with the ``[cinder]`` service credentials (plus the service token): the
caller's token may have expired and was never stored. The journal says which steps
started and which finished; each undo is the same one the pipeline would have
run, in the same order. By default (``[worker] recovery_action = undo``) anything
unfinished is undone; ``finish`` completes it instead when the virt driver had
attached. A detach the host had begun is always finished; one that had not reached
the host is rolled back. Either way the cast gets exactly one terminal notification:
``.end``, or ``.error`` with fault step ``recovery``.
"""
from typing import Any
from typing import Callable
from typing import Optional

from oslo_log import log as logging

from attachworker import context as aw_context
from attachworker import exception

LOG = logging.getLogger(__name__)

STUCK = ('reserved', 'attaching', 'error_attaching')


class Interrupted(exception.AttachWorkerException):
    """The worker stopped in the middle of the operation."""

    msg_fmt = ('The worker stopped during step %(step)s (%(state)s); the operation was '
               '%(outcome)s at recovery')
    code = 500


class Recovery:
    def __init__(self, conf: Any, cinder_api: Any, virt_driver: Any, outbox: Any) -> None:
        self._conf = conf
        self._cinder = cinder_api
        self._driver = virt_driver
        self._outbox = outbox
        self._journal = outbox.journal

    def run(self) -> dict:
        """Resolve every orphan; returns {outcome: count}."""
        counts: dict = {}
        candidates = self._journal.orphans() + self._journal.list(('undo_failed',), 100000)
        for record in candidates:
            if not self._journal.claim(record['op_id'], record['owner'], record['state']):
                continue
            outcome = self.resolve(record)
            counts[outcome] = counts.get(outcome, 0) + 1
        if counts:
            LOG.info('Recovery: %s', ', '.join('%d %s' % (n, o) for o, n in counts.items()))
        return counts

    def resolve(self, record: dict) -> str:
        """Finish or undo one operation; returns completed, undone or undo_failed."""
        fields = dict(record['fields'])
        steps = self._journal.steps(record['op_id'])
        started = {s['step'] for s in steps}
        done = {s['step'] for s in steps if s['state'] == 'done'}
        ctxt = aw_context.get_admin_context(fields.get('request_id'))
        LOG.info('Recovering %(action)s of volume %(volume)s (request %(req)s), stopped at '
                 '%(step)s (%(state)s)', {'action': record['action'],
                                          'volume': fields.get('volume_id'),
                                          'req': fields.get('request_id'),
                                          'step': record['last_step'],
                                          'state': record['step_state']})
        final = 'attachment_complete' if fields.get('flow') == 'attachments' else 'attach'
        failed: list = []
        try:
            if record['action'] == 'volume_detach':
                state, failed = self._resolve_detach(ctxt, fields, started, done)
            elif final in done or (self._conf.worker.recovery_action == 'finish'
                                   and 'driver_attach' in done
                                   and self._finish(ctxt, fields)):
                state = 'completed'
            else:
                failed = self._undo(ctxt, fields, started, done)
                state = 'undo_failed' if failed else 'undone'
        except exception.AttachWorkerException as exc:  # no Cinder client at all
            LOG.error('Recovery of %s could not reach Cinder: %s', fields.get('request_id'), exc)
            failed, state = ['cinder_client'], 'undo_failed'
        self._conclude(record, ctxt, fields, state, failed)
        return state

    def _conclude(self, record: dict, ctxt: Any, fields: dict, state: str,
                  failed: list) -> None:
        """Journal the outcome and send the cast's one terminal notification."""
        notification = None
        if record['state'] == 'running':  # an .error was already sent for undo_failed
            fault = None
            if state != 'completed':
                exc = Interrupted(step=record['last_step'] or 'start',
                                  state=record['step_state'] or 'not started',
                                  outcome='undone' if state == 'undone' else
                                  'only partly undone (%s failed)' % ', '.join(failed))
                fault = {'exception': type(exc).__name__, 'message': str(exc),
                         'step': 'recovery', 'code': exc.code}
            payload = {k: v for k, v in fields.items() if k != 'connector'}
            notification = {'action': record['action'],
                            'phase': 'error' if fault else 'end', 'fields': payload,
                            'fault': fault, 'context': record['context']}
        outbox_id = self._journal.finish(record['op_id'],
                                         state if state == 'undo_failed' else 'recovered',
                                         fields, notification=notification)
        if notification:
            self._outbox.send(outbox_id, ctxt, notification['action'],
                              notification['phase'], notification['fault'],
                              notification['fields'])

    # --- finishing ----------------------------------------------------------------------
    def _finish(self, ctxt: Any, fields: dict) -> bool:
        cinder = self._cinder.client(ctxt)
        try:
            if fields.get('flow') == 'attachments':
                cinder.attachment_complete(fields['attachment_id'])
            else:
                cinder.attach(fields['volume_id'], fields['instance_uuid'],
                              fields.get('mountpoint'), fields.get('mode') or 'rw',
                              (fields.get('connector') or {}).get('host'))
        except exception.AttachWorkerException as exc:
            LOG.warning('Could not finish %s (%s): undoing it', fields.get('request_id'), exc)
            return False
        return True

    # --- detaches -----------------------------------------------------------------------
    def _resolve_detach(self, ctxt: Any, fields: dict, started: set,
                        done: set) -> tuple:
        """A detach the host had begun is finished (the host may have let go); one
        that had not reached the host is rolled back. Returns (state, failed)."""
        volume_id, instance_uuid = fields.get('volume_id'), fields.get('instance_uuid')
        if 'get_volume' not in started:
            return 'undone', []
        cinder = self._cinder.client(ctxt)
        try:
            if 'driver_detach' not in started:
                if 'begin_detaching' in started and 'roll_detaching' not in done:
                    cinder.roll_detaching(volume_id)
                return 'undone', []
            self._driver.detach_volume(ctxt, {'uuid': instance_uuid},
                                       fields.get('mountpoint'), volume_id)
            if fields.get('attachment_id'):
                if fields.get('flow') == 'legacy':
                    cinder.terminate_connection(volume_id, fields.get('connector') or {})
                    cinder.detach_instance(volume_id, instance_uuid)
                else:
                    cinder.attachment_delete(fields['attachment_id'])
        except exception.VolumeNotFound:
            return 'completed', []
        except Exception as exc:  # noqa: BLE001 - retried at the next reconcile
            LOG.error('Recovery of the detach of volume %s failed: %s', volume_id, exc)
            return 'undo_failed', ['detach']
        return 'completed', []

    # --- undoing ------------------------------------------------------------------------
    def _undo(self, ctxt: Any, fields: dict, started: set, done: set) -> list:
        """The pipeline's undos for the steps that started, newest first."""
        volume_id = fields.get('volume_id')
        instance = {'uuid': fields.get('instance_uuid')}
        if 'get_volume' not in started:
            return []  # nothing reached Cinder
        cinder = self._cinder.client(ctxt)
        undos: list = []

        def undo(name: str, fn: Callable, *args: Any) -> None:
            if name not in done:
                undos.append((name, fn, args))

        if 'driver_attach' in started:
            undo('driver_detach', self._driver.detach_volume, ctxt, instance,
                 fields.get('mountpoint'), volume_id)
        if fields.get('flow') == 'attachments':
            if fields.get('attachment_id'):
                undo('attachment_delete', cinder.attachment_delete, fields['attachment_id'])
            elif 'attachment_create' in started:
                undo('attachment_delete', cinder.release_reservations, volume_id,
                     instance['uuid'])
        else:
            if 'attach' in started:
                undo('detach', cinder.detach_instance, volume_id, instance['uuid'])
            if 'initialize_connection' in started:
                undo('terminate_connection', cinder.terminate_connection, volume_id,
                     fields.get('connector') or {})
            if 'reserve' in started:
                undo('unreserve', cinder.unreserve, volume_id)
        if 'reserve_device' in done:
            undo('release_device', self._driver.release_device_name, instance['uuid'],
                 volume_id)
        failed = []
        for name, fn, args in undos:
            try:
                fn(*args)
            except exception.VolumeNotFound:
                LOG.info('Volume %s is gone: nothing to undo', volume_id)
                return []
            except Exception as exc:  # noqa: BLE001 - try every undo, retry later
                LOG.error('Recovery undo %s for volume %s failed: %s', name, volume_id, exc)
                failed.append(name)
        if not failed and self._still_stuck(cinder, volume_id, instance['uuid'], fields):
            failed.append('verify')
        return failed

    def _still_stuck(self, cinder: Any, volume_id: Optional[str], instance_uuid: str,
                     fields: dict) -> bool:
        """After the undos: is the volume still left reserved/attaching by us?"""
        try:
            volume = cinder.get(volume_id)
        except exception.VolumeNotFound:
            return False
        if volume['status'] not in STUCK:
            return False
        if fields.get('flow') == 'attachments':
            cinder.release_reservations(volume_id, instance_uuid)
        elif volume['status'] == 'attaching':
            cinder.unreserve(volume_id)
        status = cinder.get(volume_id)['status']
        LOG.info('Volume %s is %s after recovery', volume_id, status)
        return status in STUCK

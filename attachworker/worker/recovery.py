"""Finishing or undoing operations a dead worker left unfinished.

Runs at start-up before the worker consumes, every ``[worker] reconcile_interval``
seconds, and on demand (``attachworker-manage reconcile``). It takes only
operations whose owner process is gone (its owner lock is free) and those whose
undo failed earlier, each under the instance's lock, so it never races a
pipeline of any process on this host.

Recovery knows nothing of steps. It replays the operation's journalled stack
(attachworker.worker.undo.order), with the ``[cinder]`` service credentials plus the
service token (the caller's token may have expired and was never stored):

* an operation that committed (its last Cinder step is done) is *completed*;
* with ``[worker] recovery_action = finish``, an attach whose driver had attached
  is completed by its journalled *resume* entry, when that succeeds;
* otherwise every armed entry runs; a detach the host had begun is finished by
  its *finish* entry rather than rolled back. An operation with nothing armed (an
  extend, whose only change has no undo; any cast stopped before its first change)
  runs nothing, and is not run again.

Either way the cast gets exactly one terminal notification: ``.end``, or
``.error`` with fault step ``recovery``. An operation whose undo fails stays
``undo_failed`` and is retried at every round, with no second notification.
Any failure (Keystone or Cinder down, a bug) leaves the operation for the next
round, and the other operations of the round are still tried.
"""
import threading
from typing import Any
from typing import Optional

from oslo_log import log as logging

from attachworker import context as aw_context
from attachworker import exception
from attachworker import metrics
from attachworker.worker import locks
from attachworker.worker import undo as undo_rules
from attachworker.worker.journal_outbox import outcome_event_id

LOG = logging.getLogger(__name__)


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

    def run(self, stop: Optional[threading.Event] = None, own_only: bool = False) -> dict:
        """Resolve every orphan, until ``stop`` is set; returns {outcome: count}.
        ``own_only``: only this process's failed undos (a child of ``[worker] workers``:
        the main process resolves what dead processes left)."""
        counts: dict = {}
        # undo_failed: ours, or of a dead owner (a live one retries its own)
        candidates = self._journal.orphans() + self._journal.orphans(('undo_failed',))
        if own_only:
            candidates = [r for r in candidates if r['owner'] == self._journal.owner
                          and r['state'] == 'undo_failed']
        for record in candidates:
            if stop is not None and stop.is_set():
                LOG.info('Recovery stopped: the worker is stopping')
                break
            fields = record['fields']
            try:
                # a claim the journal could not record may still be on disk: disowned
                # below, so that the next round (of any process) takes it up again
                if not self._journal.claim(record['op_id'], record['owner'],
                                           record['state']):
                    continue
                with locks.instance_and_volume(self._conf.state_path,
                                               fields.get('instance_uuid'),
                                               fields.get('volume_id')):
                    outcome = self.resolve(self._journal.get(record['op_id']) or record)
            except Exception:  # noqa: BLE001 - one operation must not stop the round
                LOG.exception('Recovery of %s failed; it is retried at the next round',
                              record['fields'].get('request_id'))
                self._disown(record['op_id'])
                outcome = 'retry'
            counts[outcome] = counts.get(outcome, 0) + 1
            metrics.RECOVERED.labels(outcome).inc()
        if counts:
            LOG.info('Recovery: %s', ', '.join('%d %s' % (n, o) for o, n in counts.items()))
        return counts

    def _disown(self, op_id: str) -> None:
        try:
            self._journal.disown(op_id)
        except exception.JournalError as exc:
            LOG.error('Could not give operation %s back for retry: %s', op_id, exc)

    def resolve(self, record: dict) -> str:
        """Finish or undo one operation; returns completed, undone or undo_failed."""
        fields = dict(record['fields'])
        ctxt = aw_context.get_admin_context(fields.get('request_id'))
        ctxt.update_store()
        LOG.info('Recovering %(action)s of volume %(volume)s (request %(req)s), stopped at '
                 '%(step)s (%(state)s)', {'action': record['action'],
                                          'volume': fields.get('volume_id'),
                                          'req': fields.get('request_id'),
                                          'step': record['last_step'],
                                          'state': record['step_state']})
        stack = self._journal.stack(record['op_id'])
        compensator = undo_rules.Compensator(lambda: self._cinder.client(ctxt), self._driver,
                                             ctxt, self._journal.attachments_in_use)
        failed: list = []
        nothing = False  # the stack had nothing to run (an extend has no undo)
        if record['committed']:
            state = 'completed'
        elif record['state'] == 'undo_failed' and self._journal.superseded(record):
            # the instance and volume were dealt with since (a later operation on
            # them completed): replaying this stack now would undo that one
            LOG.info('Operation %s was overtaken by a later one on the same instance '
                     'and volume: its failed undo is retired', record['op_id'])
            state = 'undone'
        elif self._resumed(record, stack, compensator):
            state = 'completed'
        else:
            # an operation with no undo (an extend, or one stopped before its first
            # change) ends .error too, and nothing of it is run again
            nothing = not any(e['state'] in ('armed', 'failed')
                              and e['kind'] != undo_rules.RESUME for e in stack)
            failed, finished = self._replay(record['op_id'], stack, compensator)
            state = 'undo_failed' if failed else ('completed' if finished else 'undone')
        self._conclude(record, ctxt, fields, state, failed, nothing)
        return state

    def _resumed(self, record: dict, stack: list, compensator: Any) -> bool:
        """``recovery_action = finish``: complete an attach whose driver had attached."""
        if self._conf.worker.recovery_action != 'finish' or record['state'] != 'running':
            return False
        if any(e['state'] in ('done', 'failed') for e in stack):
            return False  # an undo already ran (the host may have let go): undo the rest
        fields = record['fields']
        if not any(a['volume_id'] == fields.get('volume_id') for a in
                   self._driver.get_attachments(fields.get('instance_uuid'))):
            return False  # the host does not have it: nothing to complete
        for entry in stack:
            if entry['kind'] == undo_rules.RESUME and entry['state'] == 'armed':
                try:
                    compensator.run(entry['name'], entry['args'])
                except exception.AttachWorkerException as exc:
                    LOG.warning('Could not finish %s (%s): undoing it',
                                record['fields'].get('request_id'), exc)
                    return False
                self._journal.set_undo_state(record['op_id'], entry, 'done')
                return True
        return False

    def _replay(self, op_id: str, stack: list, compensator: Any) -> tuple:
        """Run the armed and failed entries; returns (failed names, finished)."""
        return undo_rules.run_stack(
            stack, compensator,
            lambda entry, error: self._journal.set_undo_state(
                op_id, entry, 'failed' if error else 'done'))

    def _conclude(self, record: dict, ctxt: Any, fields: dict, state: str,
                  failed: list, nothing_to_undo: bool = False) -> None:
        """Journal the outcome and send the cast's one terminal notification.

        An operation whose ``.error`` already went out (its undo had failed) gets
        no second one: once its undo is finished, ``instance.<action>.cleanup``
        (INFO, the same fields, no fault) tells the audit trail that the volume is
        now as that ``.error`` said.
        """
        notification = None
        if record['state'] == 'undo_failed' and state != 'undo_failed':
            notification = {'action': record['action'], 'phase': 'cleanup',
                            'fields': {k: v for k, v in fields.items() if k != 'connector'},
                            'fault': None, 'context': record['context']}
        if record['state'] == 'running':  # an .error was already sent for undo_failed
            fault = None
            if state != 'completed':
                if state != 'undone':
                    how = 'only partly undone (%s failed)' % ', '.join(failed)
                elif nothing_to_undo:
                    how = 'left as it was (it had nothing to undo)'
                else:
                    how = 'undone'
                exc = Interrupted(step=record['last_step'] or 'start',
                                  state=record['step_state'] or 'not started', outcome=how)
                fault = {'exception': type(exc).__name__, 'message': str(exc),
                         'step': 'recovery', 'code': exc.code}
            payload = {k: v for k, v in fields.items() if k != 'connector'}
            notification = {'action': record['action'],
                            'phase': 'error' if fault else 'end', 'fields': payload,
                            'fault': fault, 'context': record['context'],
                            'event_id': outcome_event_id(record['op_id'])}
        outbox_id = self._journal.finish(record['op_id'],
                                         state if state == 'undo_failed' else 'recovered',
                                         fields, notification=notification)
        if notification:
            metrics.count_outcome(notification['action'], notification['phase'])
            self._outbox.send(outbox_id, ctxt, notification['action'],
                              notification['phase'], notification['fault'],
                              notification['fields'])

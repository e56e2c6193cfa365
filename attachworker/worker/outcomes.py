"""The one terminal notification of every cast: journalled with the end state, then
published. A journal that cannot be written never withholds the outcome: it is
published directly, and the end is journalled as soon as the journal works again
(``retry``, at every housekeeping round and at shutdown). Every copy of an
operation's outcome carries the same event id (``outcome_event_id``), so should a
crash before that let recovery send it again, the audit store keeps one."""
import threading
import time
from typing import Any
from typing import Optional

from oslo_log import log as logging

from attachworker import exception
from attachworker import metrics
from attachworker.worker import outbox as aw_outbox
from attachworker.worker.journal_outbox import outcome_event_id
from attachworker.worker.operation import Operation

LOG = logging.getLogger(__name__)

#: Tries at journalling an outcome before publishing it unjournalled.
FINISH_TRIES = 3


class Outcomes:
    def __init__(self, outbox: Any) -> None:
        self._outbox = outbox
        self._journal = outbox.journal
        self._lock = threading.Lock()
        #: ends published but not journalled: (op_id, state, fields, notification)
        self._unjournalled: list = []

    def finish(self, ctxt: Any, op: Operation, state: str,
               exc: Optional[BaseException] = None,
               undo_failed: Optional[list] = None, logged: bool = False) -> None:
        """Journal the end state and its notification together, then publish it.
        ``logged``: the caller said what went wrong already."""
        op.ended = (state, exc)
        fault = None
        if exc is not None:
            fault = op.fault(exc, undo_failed)
        if exc is not None and not logged:
            log = LOG.warning if getattr(exc, 'expected', False) else LOG.error
            log('%(action)s of volume %(volume)s failed at step %(step)s: %(exc)s',
                {'action': op.action, 'volume': op.fields.get('volume_id'),
                 'step': fault['step'], 'exc': fault['message']},
                exc_info=not getattr(exc, 'expected', False))
        phase = 'error' if fault else 'end'
        metrics.count_outcome(op.action, phase)
        payload = op.payload(final=True)
        notification = {'action': op.action, 'phase': phase, 'fields': payload,
                        'fault': fault, 'context': aw_outbox.context_of(ctxt),
                        'event_id': outcome_event_id(op.id)}
        for attempt in range(1, FINISH_TRIES + 1):
            try:
                outbox_id = self._journal.finish(op.id, state, op.fields,
                                                 notification=notification)
            except exception.JournalError as journal_exc:
                LOG.error('Could not journal the end of %s (try %d of %d): %s',
                          op.fields['request_id'], attempt, FINISH_TRIES, journal_exc)
                time.sleep(0.05 * attempt)
            else:
                self._outbox.send(outbox_id, ctxt, op.action, phase, fault, payload)
                return
        self._outbox.send(None, ctxt, op.action, phase, fault, payload,
                          event_id=notification['event_id'])
        with self._lock:
            self._unjournalled.append((op.id, state, dict(op.fields), notification))

    def retry(self) -> None:
        """Journal the ends that were published while the journal failed."""
        with self._lock:
            pending, self._unjournalled = self._unjournalled, []
        for index, (op_id, state, fields, notification) in enumerate(pending):
            try:
                self._journal.finish(op_id, state, fields,
                                     notification=dict(notification, sent=True))
            except exception.JournalError as exc:
                LOG.error('The journal still cannot record %d outcome(s): %s',
                          len(pending) - index, exc)
                with self._lock:
                    self._unjournalled[:0] = pending[index:]
                return

    def reject(self, ctxt: Any, action: Optional[str], exc: BaseException,
               delivery: Any) -> None:
        """A cast the dispatcher could not deliver (unknown method or version, a
        malformed message): journalled like any cast, so that a redelivery after a
        kill is not answered twice."""
        if action is None:
            delivery.ack()
            return
        op = Operation(action, ctxt.request_id, self._outbox.host)
        op.current_step = 'rpc'
        try:
            if not self._journal.begin(op, aw_outbox.context_of(ctxt), delivery.unique_id):
                delivery.ack()  # answered already
                return
        except exception.JournalError as journal_exc:
            LOG.error('Could not journal a rejected cast: %s', journal_exc)
        delivery.ack()
        self.finish(ctxt, op, 'failed', exc, logged=True)

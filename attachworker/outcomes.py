"""The one terminal notification of every cast: journalled with the end state, then
published. A journal that cannot be written never causes a second outcome, and
never withholds the first."""
import time
from typing import Any
from typing import Optional

from oslo_log import log as logging

from attachworker import exception
from attachworker import outbox as aw_outbox
from attachworker.operation import Operation

LOG = logging.getLogger(__name__)

#: Tries at journalling an outcome before publishing it unjournalled.
FINISH_TRIES = 3


class Outcomes:
    def __init__(self, outbox: Any) -> None:
        self._outbox = outbox
        self._journal = outbox.journal

    def finish(self, ctxt: Any, op: Operation, state: str,
               exc: Optional[BaseException] = None,
               undo_failed: Optional[list] = None) -> None:
        """Journal the end state and its notification together, then publish it."""
        fault = None
        if exc is not None:
            fault = op.fault(exc, undo_failed)
            log = LOG.warning if getattr(exc, 'expected', False) else LOG.error
            log('%(action)s of volume %(volume)s failed at step %(step)s: %(exc)s',
                {'action': op.action, 'volume': op.fields.get('volume_id'),
                 'step': fault['step'], 'exc': fault['message']},
                exc_info=not getattr(exc, 'expected', False))
        phase = 'error' if fault else 'end'
        payload = op.payload(final=True)
        notification = {'action': op.action, 'phase': phase, 'fields': payload,
                        'fault': fault, 'context': aw_outbox.context_of(ctxt)}
        outbox_id = None
        for attempt in range(1, FINISH_TRIES + 1):
            try:
                outbox_id = self._journal.finish(op.id, state, op.fields,
                                                 notification=notification)
                break
            except exception.JournalError as journal_exc:
                LOG.error('Could not journal the end of %s (try %d of %d): %s',
                          op.fields['request_id'], attempt, FINISH_TRIES, journal_exc)
                time.sleep(0.05 * attempt)
        # Unjournalled (outbox_id None), it is published directly: if this process
        # dies before the journal works again, recovery may send a second outcome.
        self._outbox.send(outbox_id, ctxt, op.action, phase, fault, payload)

    def reject(self, ctxt: Any, action: Optional[str], exc: BaseException) -> None:
        """A cast the dispatcher could not deliver (unknown method or version)."""
        if action is None:
            return
        op = Operation(action, ctxt.request_id, self._outbox.host)
        op.current_step = 'rpc'
        self._outbox.notify(ctxt, action, 'error', fault=op.fault(exc),
                            **op.payload(final=True))

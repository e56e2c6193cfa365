"""Notifications through the journal's outbox: durable first, published second.

``notify`` writes the notification to the journal, then publishes it; if the
broker is down it stays unsent and ``flush`` (at start-up and periodically)
publishes it later, in order. Every publication of a row carries the row's event
id as its ``message_id``: a crash between publishing and marking it sent
publishes it twice, and the audit store keeps it once. A row that fails for a
reason of its own (its payload cannot be built or encoded) is parked after a few
tries (attachworker.worker.journal_outbox) and the rows after it still go out. If the
journal itself cannot be written, the notification is published directly: an
outcome is never withheld.
"""
import threading
import time
from typing import Any
from typing import Optional

from oslo_log import log as logging

from attachworker import context as aw_context
from attachworker import exception

LOG = logging.getLogger(__name__)


def context_of(ctxt: Any) -> dict:
    """What of a context is kept with a notification: ids, never a token."""
    return ctxt.redacted() if isinstance(ctxt, aw_context.RequestContext) else {}


class Outbox:
    """Same ``notify`` as attachworker.notifications.Notifier, plus durability."""

    def __init__(self, journal: Any, notifier: Any) -> None:
        self.journal = journal
        self._notifier = notifier
        self.host = getattr(notifier, 'host', None)
        self._sending: set = set()
        self._lock = threading.Lock()

    def notify(self, ctxt: Any, action: str, phase: str, fault: Optional[dict] = None,
               **fields: Any) -> bool:
        try:
            outbox_id = self.journal.queue_notification(action, phase, fields, fault,
                                                        context_of(ctxt))
        except exception.JournalError as exc:
            return self._direct(exc, ctxt, action, phase, fault, fields)
        return self.send(outbox_id, ctxt, action, phase, fault, fields)

    def _direct(self, why: Any, ctxt: Any, action: str, phase: str,
                fault: Optional[dict], fields: dict,
                event_id: Optional[str] = None) -> bool:
        """Publish without the journal (it failed): an outcome is never withheld."""
        if why is not None:
            LOG.error('Journal unavailable (%s): publishing %s.%s directly', why, action,
                      phase)
        event = (event_id, time.time()) if event_id else None
        return self._notifier.notify(ctxt, action, phase, fault=fault, event=event,
                                     **fields)

    def send(self, outbox_id: Optional[int], ctxt: Any, action: str, phase: str,
             fault: Optional[dict], fields: dict, event_id: Optional[str] = None) -> bool:
        """Publish one queued notification; True once it is out (now or before).

        ``outbox_id`` None: it could not be queued (the journal failed); it is
        published directly, under ``event_id`` when the caller has one.
        """
        if outbox_id is None:  # the caller logged why
            return self._direct(None, ctxt, action, phase, fault, fields, event_id)
        with self._lock:
            if outbox_id in self._sending:
                return False
            self._sending.add(outbox_id)
        try:
            state = self.journal.outbox_state(outbox_id)
            if state is None or state[2]:
                return True
            if not self._notifier.notify(ctxt, action, phase, fault=fault,
                                         event=state[:2], **fields):
                if self._notifier.last_failure_is_poison():
                    parked = self.journal.mark_failed(outbox_id,
                                                      self._notifier.last_failure())
                    LOG.error('Notification %s (%s.%s) cannot be published%s', outbox_id,
                              action, phase, ': parked' if parked else '')
                return False
            try:
                self.journal.mark_sent(outbox_id)
            except exception.JournalError as exc:
                # It is out. Left unsent, it is published again later under the same
                # event id, and the audit store keeps it once.
                LOG.error('Published notification %s, but could not record it: %s',
                          outbox_id, exc)
            return True
        except exception.JournalError as exc:
            return self._direct(exc, ctxt, action, phase, fault, fields)
        finally:
            with self._lock:
                self._sending.discard(outbox_id)

    def flush(self) -> int:
        """Publish what could not be published before; stop at a broker outage."""
        sent = 0
        for row in self.journal.unsent():
            with self._lock:
                if row['id'] in self._sending:
                    continue  # a pipeline thread is publishing it right now
            ctxt = aw_context.RequestContext(overwrite=False, **{
                k: v for k, v in row['context'].items()
                if v is not None and k in aw_context.REDACTED_KEYS})
            if self.send(row['id'], ctxt, row['action'], row['phase'], row['fault'],
                         row['fields']):
                sent += 1
            elif not self._notifier.last_failure_is_poison():
                LOG.warning('Notifications still cannot be published; %d sent, the rest '
                            'stays queued in the journal', sent)
                break
        if sent:
            LOG.info('Published %d queued notification(s)', sent)
        return sent

"""Notifications through the journal's outbox: durable first, published second.

``notify`` writes the notification to the journal, then publishes it; if the
broker is down it stays unsent and ``flush`` (at start-up and periodically)
publishes it later, in order. A crash between publishing and marking it sent can
publish it twice: delivery is at least once, as for every oslo.messaging
notification, and consumers de-duplicate. If the journal itself cannot be written,
the notification is published directly: an outcome is never withheld.
"""
import threading
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
        self._sending: set = set()
        self._lock = threading.Lock()

    def notify(self, ctxt: Any, action: str, phase: str, fault: Optional[dict] = None,
               **fields: Any) -> bool:
        try:
            outbox_id = self.journal.queue_notification(action, phase, fields, fault,
                                                        context_of(ctxt))
        except exception.JournalError as exc:
            LOG.error('Journal unavailable (%s): publishing %s.%s directly', exc, action,
                      phase)
            return self._notifier.notify(ctxt, action, phase, fault=fault, **fields)
        return self.send(outbox_id, ctxt, action, phase, fault, fields)

    def send(self, outbox_id: Optional[int], ctxt: Any, action: str, phase: str,
             fault: Optional[dict], fields: dict) -> bool:
        """Publish one queued notification; True once it is out (now or before)."""
        if outbox_id is None:  # not queued: the journal failed
            return self._notifier.notify(ctxt, action, phase, fault=fault, **fields)
        with self._lock:
            if outbox_id in self._sending:
                return False
            if self.journal.is_sent(outbox_id):
                return True
            self._sending.add(outbox_id)
        try:
            if not self._notifier.notify(ctxt, action, phase, fault=fault, **fields):
                return False
            self.journal.mark_sent(outbox_id)
            return True
        finally:
            with self._lock:
                self._sending.discard(outbox_id)

    def flush(self) -> int:
        """Publish what could not be published before; stop at the first failure."""
        sent = 0
        for row in self.journal.unsent():
            ctxt = aw_context.RequestContext(overwrite=False, **{
                k: v for k, v in row['context'].items() if v is not None})
            if not self.send(row['id'], ctxt, row['action'], row['phase'], row['fault'],
                             row['fields']):
                LOG.warning('Notifications still cannot be published; %d sent, the rest '
                            'stays queued in the journal', sent)
                break
            sent += 1
        if sent:
            LOG.info('Published %d queued notification(s)', sent)
        return sent

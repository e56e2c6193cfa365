"""The audit endpoint: where each notification's fate is decided.

Notifications come in batches (oslo.messaging's batch listener); the events of a
batch are stored in one transaction, and the listener acknowledges each message
only after :meth:`AuditEndpoint.handle_batch` has returned its fate:

* ``HANDLED`` once its row is committed, once it is known to be a duplicate, or
  once it is stored in ``rejected``;
* ``REQUEUE`` only when the consumer stops while the database is unavailable.

While the database is unavailable the handler *holds* the messages it has: neither
acked nor requeued, they are stored again in place after a back-off shared by all
handler threads (:mod:`~attachworker.audit.backoff`), until the database is back.
A requeue would count as a delivery on a quorum queue, whose delivery limit would
drop the message after a short outage; held, a message is delivered once however
long the outage lasts. The prefetch bounds how many are held; a stop cuts the
back-off short and requeues them, once each.

A message is never requeued for what it is: one that fails to be read or stored
for any other reason (a bug included) is kept in ``rejected`` on its own, and the
rest of its batch is stored. A poison message must not wedge a batch or a queue.
"""
import contextlib
import json
import logging as logging_std
import threading
import time
from typing import Any
from typing import Callable
from typing import Iterator
from typing import Optional

from oslo_context import context as o_context
from oslo_log import log as logging
import oslo_messaging as messaging
from oslo_utils import timeutils

from attachworker import context as aw_context
from attachworker import metrics
from attachworker.audit import contract
from attachworker.audit import masking
from attachworker.audit.backoff import Backoff
from attachworker.audit.store import Store
from attachworker.exception import AuditRecordRefused
from attachworker.exception import AuditStoreUnavailable
from attachworker.exception import MalformedNotification

LOG = logging.getLogger(__name__)
HANDLED = messaging.NotificationResult.HANDLED
REQUEUE = messaging.NotificationResult.REQUEUE


class AuditEndpoint:
    """Stores notifications; returns HANDLED (or REQUEUE, when stopping) for each."""

    def __init__(self, store: Store, *, max_message_size: int, excerpt_length: int,
                 backoff: Backoff) -> None:
        self._store = store
        self._max_size = max_message_size
        self._excerpt_length = excerpt_length
        self._backoff = backoff
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._in_flight = 0
        #: Each message's fate, counted once per delivery.
        self.counts = dict.fromkeys(('stored', 'duplicate', 'rejected', 'requeued'), 0)
        #: Messages that waited for the database (then got one of the fates above).
        self.held = 0

    def stop(self) -> None:
        """Cut back-off waits short: held messages are requeued at once."""
        self._stopping.set()

    @contextlib.contextmanager
    def handling(self, number: int) -> Iterator[None]:
        """Count messages as in flight (for :meth:`drain`) inside the block."""
        self._add_in_flight(number)
        try:
            yield
        finally:
            self._add_in_flight(-number)

    def drain(self, timeout: float) -> int:
        """Wait until no message is being handled; return how many still are."""
        deadline = time.monotonic() + timeout
        while self._in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        return self._in_flight

    def handle(self, ctxt: Any, message: Any) -> str:
        return self.handle_batch([(ctxt, message)])[0]

    def handle_batch(self, items: list) -> list:
        """(ctxt, message) pairs -> their fates, in the same order."""
        received_at = timeutils.utcnow()  # kept while held: when it reached us
        with self.handling(len(items)):
            try:
                return self.hold(lambda subset: self._handle_batch(subset, received_at),
                                 items)
            finally:
                _forget_log_context()

    def hold(self, attempt: Callable[[list], list], items: list,
             results: Optional[list] = None) -> list:
        """Fates of ``items``: ``attempt(items)``, retried in place while REQUEUE.

        ``attempt`` takes a sub-list of ``items`` and returns their fates (``results``
        are those of a first attempt already made). The ones the database was
        unavailable for are held and attempted again after each back-off, until
        they are handled or the consumer stops: then they are requeued, once.
        """
        results = list(attempt(items) if results is None else results)
        pending = [index for index, result in enumerate(results) if result == REQUEUE]
        if not pending:
            return results
        held, began, retries = len(pending), time.monotonic(), 0
        with self._lock:
            self.held += held
        while pending:
            if self._stopping.wait(self._backoff.failed()):
                self._count('requeued', len(pending))
                LOG.warning('Stopping: %(count)d notifications held while the audit '
                            'store was unavailable are requeued', {'count': len(pending)})
                return results
            retries += 1
            for index, result in zip(pending, attempt([items[i] for i in pending]),
                                     strict=True):
                results[index] = result
            pending = [index for index in pending if results[index] == REQUEUE]
        LOG.info('Audit store available again: %(count)d held notifications handled '
                 'after %(seconds).1f s and %(retries)d retries',
                 {'count': held, 'seconds': time.monotonic() - began,
                  'retries': retries})
        return results

    def _handle_batch(self, items: list, received_at: Any) -> list:
        results = [None] * len(items)
        events = []
        for index, (ctxt, message) in enumerate(items):
            try:
                events.append((index, contract.parse(ctxt, message, received_at,
                                                     self._max_size)))
            except MalformedNotification as exc:
                results[index] = self.reject(str(exc), _excerpt_source(ctxt, message),
                                             contract.describe(message))
            except Exception as exc:  # a bug reading one message: it alone is kept aside
                LOG.exception('Audit consumer failed to read a notification')
                results[index] = self.reject(
                    f'audit consumer error: {type(exc).__name__}: {exc}',
                    _excerpt_source(ctxt, message), contract.describe(message))
        for (index, _), result in zip(events, self._store_events(events, items),
                                      strict=True):
            results[index] = result
        return results

    def _store_events(self, events: list, items: list) -> list:
        if not events:
            return []
        try:
            stored = self._store.record_events([event for _, event in events])
        except AuditStoreUnavailable as exc:
            LOG.warning('Audit store unavailable, %(count)d notifications held '
                        '(requests %(requests)s): %(error)s',
                        {'count': len(events), 'error': exc,
                         'requests': ', '.join(sorted({e.request_id for _, e in events}))})
            return [REQUEUE] * len(events)
        except AuditRecordRefused as exc:
            if len(events) > 1:  # one by one, to find the one the database refuses
                return [result for pair in events
                        for result in self._store_events([pair], items)]
            ctxt, message = items[events[0][0]]
            return [self.reject(str(exc), _excerpt_source(ctxt, message),
                                contract.describe(message))]
        self._backoff.succeeded()
        debug = LOG.isEnabledFor(logging_std.DEBUG)
        for (_, event), new in zip(events, stored, strict=True):
            self._count('stored' if new else 'duplicate')
            if new:
                metrics.AUDIT_LAG.observe(
                    max(0.0, (event.received_at - event.timestamp).total_seconds()))
            if debug:
                LOG.debug('%(what)s %(event_type)s from %(publisher)s (message '
                          '%(message_id)s)',
                          {'what': 'Stored' if new else 'Already stored, acknowledged',
                           'event_type': event.event_type, 'publisher': event.publisher_id,
                           'message_id': event.message_id}, context=_log_context(event))
        return [HANDLED] * len(events)

    def reject(self, reason: str, source: Any, identity: Optional[dict] = None,
               size: Optional[int] = None) -> str:
        """Keep a message that is not a storable event; REQUEUE if that fails too.

        REQUEUE means the store is unavailable: the caller holds the message
        (:meth:`hold`) rather than requeueing it.
        """
        identity = identity or {}
        length, excerpt = self._excerpt(source)
        # The same rule as the row's (the store masks its own copy): no secret is
        # logged either, and no text the log file cannot encode.
        shown = masking.mask_row(dict({'message_id': None, 'event_type': None,
                                       'publisher_id': None}, **identity, reason=reason))
        try:
            self._store.record_rejected(
                reason=reason, size=length if size is None else size, excerpt=excerpt,
                received_at=timeutils.utcnow(), **identity)
        except AuditStoreUnavailable as exc:
            LOG.warning('Audit store unavailable, rejected notification %(message_id)s '
                        'held: %(error)s',
                        {'message_id': shown['message_id'], 'error': exc})
            return REQUEUE
        except AuditRecordRefused as exc:
            # Nothing about this message will ever fit: requeueing would loop.
            LOG.error('Dropped notification %(message_id)s (%(reason)s): the rejected '
                      'table refused it too (%(error)s); excerpt: %(excerpt)s',
                      {'message_id': shown['message_id'], 'reason': shown['reason'],
                       'error': exc, 'excerpt': masking.storable(excerpt[:256])})
            return HANDLED
        self._backoff.succeeded()
        self._count('rejected')
        LOG.warning('Rejected notification %(message_id)s (%(event_type)s from '
                    '%(publisher_id)s): %(reason)s', shown)
        return HANDLED

    def _excerpt(self, source: Any) -> tuple:
        """(size, masked excerpt) of a message; never fails: it must be kept somehow."""
        try:
            if isinstance(source, str):  # a raw body: mask it as text
                text = source
                excerpt = masking.mask_text(text[:self._excerpt_length * 2])
            else:  # structured: masked by key before it becomes JSON text
                text = excerpt = json.dumps(masking.mask(source), sort_keys=True,
                                            default=lambda value: masking.mask_text(
                                                repr(value)))
        except Exception as exc:  # too deep to walk, keys JSON cannot sort...
            text = excerpt = f'<{type(source).__name__}: {type(exc).__name__}>'
        return len(text), excerpt[:self._excerpt_length]

    def _count(self, what: str, number: int = 1) -> None:
        metrics.AUDIT_MESSAGES.labels(what).inc(number)
        with self._lock:
            self.counts[what] += number

    def _add_in_flight(self, number: int) -> None:
        with self._lock:
            self._in_flight += number


def _excerpt_source(ctxt: Any, message: Any) -> dict:
    if isinstance(ctxt, dict):
        ctxt = {key: value for key, value in ctxt.items()
                if key not in contract.TRANSPORT_KEYS}
    return {'context': ctxt, 'message': message}


def _log_context(event: contract.AuditEvent) -> aw_context.RequestContext:
    # overwrite=True: lines logged meanwhile by libraries carry this request too.
    return aw_context.RequestContext(
        request_id=event.request_id, global_request_id=event.global_request_id,
        user_id=event.user_id, project_id=event.project_id, overwrite=True)


def _forget_log_context() -> None:
    # oslo.context keeps the last context made current in a thread and logs it on
    # lines that have none; there is no public way to drop it. Without this, a line
    # logged later in this thread without a request would show an old request id.
    vars(o_context._request_store).pop('context', None)

"""oslo.messaging wiring for the audit consumer, and where it had to be extended.

oslo.messaging 18.3.1 loses or loops on some messages before any endpoint sees
them (found by reading ``_drivers/impl_rabbit.py``, ``_drivers/amqpdriver.py``
and ``notify/dispatcher.py``, and by publishing garbage at a listener):

* ``impl_rabbit.Consumer._callback`` builds ``RabbitMessage(kombu_message)``;
  a body that is not JSON, JSON that is not an object, a ``oslo.version`` it does
  not support or an ``oslo.message`` that is not JSON raise there, and the
  message is ``reject()``-ed without requeue: dropped, with only a log line.
* ``NotificationDispatcher`` acks a message whose ``priority`` is missing or
  unknown ("Unknown priority" warning) or has no endpoint method (silently);
  a ``priority`` that is not a string raises ``AttributeError`` and the message
  is requeued forever, thousands of times a second.

So the audit listener (a batch listener: one transaction per batch) uses its own
dispatcher, which hands every message to the endpoint (the contract check rejects
what is not ours), and puts a guard in
front of each rabbit consumer callback that records undecodable or oversized
bodies in ``rejected`` and acks them. The guard replaces ``Consumer._callback``
on the consumers of this listener only; it depends on rabbit-driver internals
pinned by requirements.txt, and is skipped (with a log line) on other drivers.
When even ``rejected`` cannot be written (the database is unavailable), the
guard holds the message as the endpoint does (see :mod:`.consumer`), in a thread
of its own: the polling thread must go on consuming, acking and heartbeating. The
ack (or the requeue, on stop) is then handed back to the polling thread through
the driver's message-operations queue, as oslo.messaging does for its own acks.
Remove it once oslo.messaging hands undecodable messages to a hook of its own.
"""
import json
import threading
from typing import Any
from typing import Optional

from oslo_log import log as logging
import oslo_messaging as messaging
from oslo_messaging import dispatcher
from oslo_messaging._drivers import impl_rabbit
from oslo_messaging.notify import listener as notify_listener

from attachworker.audit import contract
from attachworker.audit.consumer import HANDLED
from attachworker.audit.consumer import AuditEndpoint

LOG = logging.getLogger(__name__)


class AuditDispatcher(dispatcher.DispatcherBase):
    """Every message of a batch goes to the endpoint, whatever its ``priority``."""

    supported_priorities = contract.PRIORITIES

    def __init__(self, endpoint: AuditEndpoint) -> None:
        self._endpoint = endpoint

    def dispatch(self, incoming: list) -> set:
        """Handle a batch; return the messages to requeue (the rest are acked)."""
        try:
            results = self._endpoint.handle_batch(
                [(message.ctxt, message.message) for message in incoming])
        except Exception as exc:  # a bug here must not requeue the batch forever
            LOG.exception('Audit endpoint failed on a batch of notifications')
            reason = f'audit consumer error: {type(exc).__name__}: {exc}'
            with self._endpoint.handling(len(incoming)):
                results = self._endpoint.hold(lambda subset: [self._endpoint.reject(
                    reason, {'message': message.message},
                    contract.describe(message.message)) for message in subset], incoming)
        return {message for message, result in zip(incoming, results, strict=True)
                if result != HANDLED}


class RawMessageGuard:
    """Stands in for ``Consumer._callback``: what cannot be decoded is rejected."""

    def __init__(self, consumer: Any, endpoint: AuditEndpoint, max_size: int,
                 operations: Optional[Any] = None) -> None:
        self._consumer = consumer
        self._endpoint = endpoint
        self._max_size = max_size
        # The poller's MessageOperationsHandler: do(task) runs task on the polling
        # thread. Without one, a message is held on the calling thread.
        self._operations = operations

    def __call__(self, kombu_message: Any) -> None:
        to_python = getattr(self._consumer.queue.channel, 'message_to_python', None)
        if to_python:
            kombu_message = to_python(kombu_message)
        body = kombu_message.body or b''
        if len(body) > self._max_size:
            return self._reject(kombu_message, f'message is {len(body)} bytes, more than '
                                f'max_message_size ({self._max_size})')
        try:
            decoded = kombu_message.payload
        except Exception as exc:
            return self._reject(kombu_message, 'body is not valid %s: %s' % (
                kombu_message.content_type or 'data', _error(exc)))
        if not isinstance(decoded, dict):
            return self._reject(kombu_message, 'body decodes to %s, not a JSON object'
                                % type(decoded).__name__)
        try:
            message = impl_rabbit.RabbitMessage(kombu_message)
        except Exception as exc:
            return self._reject(kombu_message, f'bad oslo.messaging envelope: {_error(exc)}')
        if self._seen(message.get('_unique_id')):
            # Acked before but the ack was lost with the connection: oslo.messaging
            # would leave this redelivery unacked, holding a prefetch slot.
            kombu_message.ack()
            return None
        try:
            self._consumer.callback(message)
        except Exception as exc:
            LOG.exception('oslo.messaging failed to take a message')
            return self._reject(kombu_message, f'unreadable message: {_error(exc)}')
        return None

    def _seen(self, unique_id: Any) -> bool:
        cache = getattr(self._consumer.callback, 'msg_id_cache', None)
        return bool(unique_id) and unique_id in getattr(cache, 'prev_msgids', ())

    def _reject(self, kombu_message: Any, reason: str) -> None:
        body = kombu_message.body or b''
        text = body.decode('utf-8', 'replace') if isinstance(body, bytes) else str(body)
        identity = _identity(text)

        def attempt(subset: list) -> list:
            return [self._endpoint.reject(reason, text, identity, size=len(body))
                    for _ in subset]
        first = attempt([kombu_message])
        if first == [HANDLED]:
            # We run on the listener's polling thread: acking here is thread-safe.
            kombu_message.ack()
        elif self._operations is None:
            with self._endpoint.handling(1):
                _settle(kombu_message, self._endpoint.hold(attempt, [kombu_message],
                                                           first))
        else:
            threading.Thread(target=self._hold, args=(attempt, kombu_message, first),
                             name='audit-hold', daemon=True).start()

    def _hold(self, attempt: Any, kombu_message: Any, first: list) -> None:
        with self._endpoint.handling(1):
            results = self._endpoint.hold(attempt, [kombu_message], first)
            self._operations.do(lambda: _settle(kombu_message, results))


def _settle(kombu_message: Any, results: list) -> None:
    try:
        if results == [HANDLED]:
            kombu_message.ack()
        else:
            kombu_message.requeue()
    except Exception as exc:  # the connection was lost: the broker redelivers it
        LOG.warning('Failed to settle a rejected message: %s', exc)


def _error(exc: Exception) -> str:
    return f'{type(exc).__name__}: {exc}'[:300]


def _identity(text: str) -> dict:
    """Best effort: the message_id etc. of a body we could not take."""
    try:
        outer = json.loads(text)
        inner = outer.get('oslo.message') if isinstance(outer, dict) else None
        return contract.describe(json.loads(inner) if isinstance(inner, str) else outer)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than it decodes
        return {}


class AuditNotificationServer(notify_listener.BatchNotificationServer):
    """A batch notification listener whose messages all reach :class:`AuditEndpoint`."""

    def __init__(self, transport: messaging.Transport, targets: list,
                 endpoint: AuditEndpoint, pool: str, max_message_size: int,
                 batch_size: int, batch_timeout: float) -> None:
        super().__init__(transport, targets, AuditDispatcher(endpoint),
                         executor='threading', allow_requeue=True, pool=pool,
                         batch_size=batch_size, batch_timeout=batch_timeout)
        self._endpoint = endpoint
        self._max_message_size = max_message_size

    def _create_listener(self) -> Any:
        listener = super()._create_listener()
        poller = getattr(listener, '_poll_style_listener', None)
        connection = getattr(getattr(poller, 'conn', None), 'connection', None)
        consumers = getattr(connection, '_consumers', None)
        if not isinstance(connection, impl_rabbit.Connection) or not consumers:
            LOG.info('Not a rabbit transport: undecodable messages are left to the '
                     'driver')
            return listener
        operations = getattr(poller, '_message_operations_handler', None)
        for consumer in list(consumers):
            consumer._callback = RawMessageGuard(consumer, self._endpoint,
                                                 self._max_message_size, operations)
        return listener


def get_listener(transport: messaging.Transport, topic: str, endpoint: AuditEndpoint,
                 pool: str, max_message_size: int, batch_size: int = 1,
                 batch_timeout: float = 0.2) -> AuditNotificationServer:
    return AuditNotificationServer(transport, [messaging.Target(topic=topic)], endpoint,
                                   pool, max_message_size, batch_size, batch_timeout)

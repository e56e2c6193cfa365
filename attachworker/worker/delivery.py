"""When the broker may forget a cast: once the journal has it, not before.

oslo.messaging 18.3.1 acknowledges every RPC message on arrival, in the consumer
callback (``RpcAMQPListener.__call__``), before anything is dispatched: a worker
killed -9 loses every cast it had received and not yet run, and a prefetch limit
holds nothing back. For the compute worker's rabbit consumers,
:class:`DeferredAck` stands in for that callback:

* a **cast** is not acknowledged on arrival. The worker thread that runs it
  journals it (``Journal.begin``) and then calls :meth:`Delivery.ack`, which hands
  the ack to the consumer thread (kombu is not thread-safe) through the
  listener's own operations queue, as oslo.messaging does for notifications. So
  at most ``rabbit_qos_prefetch_count`` casts are held unacknowledged; a kill -9
  returns them to the queue, and the next worker runs them.
* a cast delivered again (after a kill, or after a reconnect) whose
  ``_unique_id`` the journal already has is acknowledged and dropped; the
  journal's row gets its one outcome (the run, or recovery).
* ``deferred_requeue`` gives a cast back to the broker the same way (with
  ``[worker] workers`` > 1, for one that keeps killing the child it is handed to: the
  broker counts its deliveries, see ``rpc.QUORUM_DELIVERY_LIMIT``).
* an RPC **call** keeps oslo.messaging's ack on arrival: its caller waits for the
  answer and retries itself (at most once, as oslo.messaging documents).

This relies on rabbit-driver internals (``AMQPListener.__call__``, ``incoming``,
``_message_operations_handler``, ``msg_id_cache``) pinned by requirements.txt,
as attachworker.audit.listener does; on another driver casts are acknowledged
on arrival, as oslo.messaging does (logged at start-up).
"""
import contextlib
import functools
import threading
from typing import Any
from typing import Callable
from typing import Iterator
from typing import Optional

from oslo_log import log as logging
from oslo_messaging._drivers import amqpdriver
from oslo_messaging._drivers import impl_rabbit

LOG = logging.getLogger(__name__)

_current = threading.local()


class Delivery:
    """The message a worker thread is running; ``ack`` once it is journalled."""

    def __init__(self, incoming: Any = None) -> None:
        self.unique_id: Optional[str] = getattr(incoming, 'unique_id', None)
        self._ack = getattr(incoming, 'deferred_ack', None)

    def ack(self) -> None:
        ack, self._ack = self._ack, None
        if ack is not None:
            ack()

    def release(self) -> None:
        """Never ack: the broker delivers the cast again when this connection closes."""
        self._ack = None


def current() -> Delivery:
    return getattr(_current, 'delivery', None) or Delivery()


@contextlib.contextmanager
def delivering(incoming: Any) -> Iterator[Delivery]:
    """Run a dispatch with its delivery at hand; acked at the end in any case."""
    delivery = _current.delivery = Delivery(incoming)
    try:
        yield delivery
    finally:
        delivery.ack()
        _current.delivery = None


def _requeue(message: Any) -> None:
    try:
        message.requeue()
    except Exception as exc:  # noqa: BLE001 - the connection it came on is gone
        LOG.warning('Could not requeue a cast (it will be delivered again when the '
                    'connection closes): %s', exc)


def _acknowledge(message: Any) -> None:
    try:
        message.acknowledge()
    except Exception as exc:  # noqa: BLE001 - the connection it came on is gone
        LOG.warning('Could not acknowledge a cast (it will be delivered again and '
                    'recognised): %s', exc)


class DeferredAck:
    """Stands in for ``RpcAMQPListener`` as the consumers' callback."""

    def __init__(self, listener: Any, known_cast: Callable[[str], bool]) -> None:
        self._listener = listener
        self._known = known_cast

    def __call__(self, message: Any) -> None:
        if message.get('_msg_id'):
            return self._listener(message)  # a call: acked on arrival
        try:
            self._take(message)
        except Exception:  # noqa: BLE001 - oslo.messaging would reject (drop) the cast
            LOG.exception('Could not take a cast in; it is left unacknowledged, for '
                          'the broker to deliver again')

    def _take(self, message: Any) -> None:
        unique_id = message.get('_unique_id')
        try:
            known = bool(unique_id) and self._known(unique_id)
        except Exception as exc:  # noqa: BLE001 - Journal.begin's unique index decides
            LOG.warning('Could not look cast %s up in the journal (%s): taking it',
                        unique_id, exc)
            known = False
        if known:
            LOG.info('Cast %s was delivered again and is already journalled: '
                     'acknowledged', unique_id)
            return _acknowledge(message)
        cache = self._listener.msg_id_cache.prev_msgids
        if unique_id in cache:  # oslo.messaging would drop it and never ack it
            cache.remove(unique_id)
        before = len(self._listener.incoming)
        amqpdriver.AMQPListener.__call__(self._listener, message)  # no ack
        if len(self._listener.incoming) > before:
            handler = self._listener._message_operations_handler
            incoming = self._listener.incoming[-1]
            incoming.deferred_ack = functools.partial(
                handler.do, functools.partial(_acknowledge, message))
            # for [worker] workers > 1: back to the broker, which counts the delivery
            incoming.deferred_requeue = functools.partial(
                handler.do, functools.partial(_requeue, message))


def install(listener: Any, known_cast: Callable[[str], bool]) -> bool:
    """Put DeferredAck in front of the RPC listener's rabbit consumers."""
    poller = getattr(listener, '_poll_style_listener', None)
    connection = getattr(getattr(poller, 'conn', None), 'connection', None)
    consumers = getattr(connection, '_consumers', None)
    if not isinstance(poller, amqpdriver.RpcAMQPListener) or not isinstance(
            connection, impl_rabbit.Connection) or not consumers:
        LOG.info('Not a rabbit transport: casts are acknowledged on arrival')
        return False
    for consumer in list(consumers):
        consumer.callback = DeferredAck(poller, known_cast)
    return True

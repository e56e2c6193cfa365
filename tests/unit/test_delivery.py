"""attachworker.worker.delivery: a cast is acknowledged once journalled, never dropped."""
import collections

from oslo_messaging._drivers import amqp as rpc_amqp
from oslo_messaging._drivers import amqpdriver

from attachworker import context as aw_context
from attachworker.worker import delivery
from attachworker.worker.journal import Journal


class Message(dict):
    """A RabbitMessage stand-in: what the consumer callback receives."""

    def __init__(self, unique_id, **body):
        super().__init__(body, _unique_id=unique_id, method='attach_volume', args={})
        self.acked = 0

    def acknowledge(self):
        self.acked += 1


class Operations:
    """The listener's queue of acks for the consumer thread."""

    def __init__(self):
        self.tasks = collections.deque()

    def do(self, task):
        self.tasks.append(task)


class Listener:
    """What DeferredAck uses of oslo.messaging's RpcAMQPListener."""

    message_cls = amqpdriver.AMQPIncomingMessage
    use_cache = True

    def __init__(self):
        self.msg_id_cache = rpc_amqp._MsgIdCache()
        self.incoming = []
        self._message_operations_handler = Operations()
        self._obsolete_reply_queues = None

    def __call__(self, message):  # a call's path: not used for casts
        raise AssertionError('a cast went the ack-on-arrival way')


def take(listener, message, known):
    delivery.DeferredAck(listener, known)(message)


def test_a_cast_is_acked_only_once_its_worker_acks_it():
    listener, message = Listener(), Message('u-1')
    take(listener, message, lambda unique_id: False)
    assert message.acked == 0 and len(listener.incoming) == 1
    listener.incoming[0].deferred_ack()  # the worker thread, after Journal.begin
    assert message.acked == 0  # handed to the consumer thread...
    listener._message_operations_handler.tasks.popleft()()
    assert message.acked == 1  # ...which sends it


def test_a_redelivery_the_journal_knows_is_acked_and_dropped():
    listener, message = Listener(), Message('u-2')
    take(listener, message, lambda unique_id: unique_id == 'u-2')
    assert message.acked == 1 and listener.incoming == []


def test_a_redelivery_in_oslo_messagings_duplicate_cache_is_still_taken():
    listener, message = Listener(), Message('u-3')
    listener.msg_id_cache.add('u-3')  # seen before the reconnect: oslo would drop it
    take(listener, message, lambda unique_id: False)
    assert len(listener.incoming) == 1


def test_a_journal_that_cannot_be_read_never_drops_the_cast():
    def broken(unique_id):
        raise RuntimeError('disk I/O error')
    listener, message = Listener(), Message('u-4')
    take(listener, message, broken)
    assert len(listener.incoming) == 1 and message.acked == 0


def test_a_rejected_cast_delivered_again_is_not_answered_twice(make_manager, ctxt,
                                                               notifications, journal):
    manager = make_manager()

    class Delivery:
        unique_id = 'u-rejected'
        acks = 0

        def ack(self):
            Delivery.acks += 1
    for _ in range(2):  # the first ack was lost: the broker delivers it again
        manager._outcomes.reject(ctxt, 'volume_attach', RuntimeError('no such version'),
                                 Delivery())
    assert [e for e, _, _, _ in notifications()] == ['instance.volume_attach.error']
    assert Delivery.acks == 2
    assert journal.known_cast('u-rejected')


def test_known_cast_reads_the_journal(tmp_path):
    journal = Journal(str(tmp_path))
    from attachworker.worker.operation import Operation
    journal.begin(Operation('volume_attach', 'r', 'h'), aw_context.RequestContext().redacted(),
                  'u-5')
    assert journal.known_cast('u-5') and not journal.known_cast('u-6')
    journal.close()

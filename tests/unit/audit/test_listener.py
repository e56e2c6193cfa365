"""oslo.messaging wiring: every message reaches the endpoint or the rejected table."""
import json
import pickle
import threading
import time
import uuid

from oslo_config import cfg
import oslo_messaging as messaging
import pytest

from attachworker import rpc
from attachworker.audit import listener
from attachworker.audit import models
from attachworker.audit import testing
from tests.unit.audit.helpers import FakeConsumer
from tests.unit.audit.helpers import FakeKombuMessage
from tests.unit.audit.helpers import count
from tests.unit.audit.helpers import notification
from tests.unit.audit.helpers import rows


class Incoming:
    """What oslo.messaging hands a dispatcher: hashable, with ctxt and message."""

    def __init__(self, ctxt, message):
        self.ctxt, self.message = ctxt, message


def test_dispatcher_subscribes_to_info_and_error_only(endpoint):
    assert set(listener.AuditDispatcher(endpoint).supported_priorities) == {'info',
                                                                             'error'}


@pytest.mark.parametrize('priority', [None, 7, '', 'WARN', 'sample'])
def test_odd_priorities_are_rejected_not_dropped_nor_looped(endpoint, engine, priority):
    """oslo.messaging acks an unknown priority silently and loops on a non-string."""
    ctxt, msg = notification('attach', 'start')
    msg['priority'] = priority
    incoming = Incoming(ctxt, msg)
    assert listener.AuditDispatcher(endpoint).dispatch([incoming]) == set()  # all acked
    [rejected] = rows(engine, models.rejected)
    assert 'priority' in rejected['reason']


def test_an_endpoint_bug_rejects_the_batch_instead_of_looping(endpoint, engine):
    def broken(items):
        raise KeyError('bug')
    endpoint.handle_batch = broken
    batch = [Incoming({}, {'message_id': 'm-%d' % n})
             for n in range(3)]
    assert listener.AuditDispatcher(endpoint).dispatch(batch) == set()
    reasons = [row['reason'] for row in rows(engine, models.rejected)]
    assert reasons == ["audit consumer error: KeyError: 'bug'"] * 3


def test_a_batch_is_stored_together_and_only_failures_requeued(endpoint, engine,
                                                               lock_database):
    good = [Incoming(c, m)
            for c, m in (notification('attach', 'start') for _ in range(3))]
    bad = Incoming({}, {'message_id': 'm-bad'})
    dispatcher = listener.AuditDispatcher(endpoint)
    assert dispatcher.dispatch(good[:2] + [bad]) == set()
    assert (count(engine, models.events), count(engine, models.rejected)) == (2, 1)
    conn = lock_database()
    requeue = []  # the database is away: the batch is held, then stored
    handler = threading.Thread(target=lambda: requeue.append(dispatcher.dispatch(good)))
    handler.start()
    time.sleep(0.5)
    assert requeue == [] and endpoint.held == 3
    conn.execute('ROLLBACK')
    handler.join(5)
    assert requeue == [set()]
    assert count(engine, models.events) == 3
    assert endpoint.counts == {'stored': 3, 'duplicate': 2, 'rejected': 1, 'requeued': 0}


# --- the raw-body guard in front of the rabbit driver's consumer callback -----------

def envelope(inner, version='2.0'):
    return json.dumps({'oslo.version': version,
                       'oslo.message': inner if isinstance(inner, str)
                       else json.dumps(inner)}).encode()


@pytest.fixture
def guard(endpoint):
    consumer = FakeConsumer()
    return listener.RawMessageGuard(consumer, endpoint, max_size=4096), consumer


@pytest.mark.parametrize('body,content_type,reason', [
    (b'not json at all', 'application/json', 'body is not valid application/json'),
    (b'\x80\x81\x82', 'application/octet-stream', 'body decodes to bytes, not a JSON object'),
    (b'[1, 2, 3]', 'application/json', 'body decodes to list, not a JSON object'),
    (pickle.dumps({'a': 1}), 'application/x-python-serialize',
     'body is not valid application/x-python-serialize'),
    (envelope({}, version='3.0'), 'application/json', 'bad oslo.messaging envelope'),
    (envelope('{broken'), 'application/json', 'bad oslo.messaging envelope'),
])
def test_undecodable_bodies_are_rejected_and_acked(guard, engine, body, content_type,
                                                   reason):
    guard_, consumer = guard
    raw = FakeKombuMessage(body, content_type)
    guard_(raw)
    assert raw.settled == 'ack'
    assert consumer.taken == []
    [rejected] = rows(engine, models.rejected)
    assert reason in rejected['reason']
    assert rejected['size'] == len(body)


def test_an_oversized_body_is_rejected_with_its_message_id(guard, engine):
    guard_, consumer = guard
    msg = notification('attach', 'start', mountpoint='/dev/' + 'x' * 5000)[1]
    raw = FakeKombuMessage(envelope(msg))
    guard_(raw)
    assert raw.settled == 'ack' and consumer.taken == []
    [rejected] = rows(engine, models.rejected)
    assert rejected['message_id'] == msg['message_id']
    assert 'more than max_message_size (4096)' in rejected['reason']


def test_a_good_body_goes_on_to_oslo_messaging_unacked(guard, engine):
    guard_, consumer = guard
    msg = notification('attach', 'start')[1]
    raw = FakeKombuMessage(envelope(msg))
    guard_(raw)
    assert raw.settled is None  # acked later, by the listener, after the commit
    assert consumer.taken[0]['message_id'] == msg['message_id']
    assert count(engine, models.rejected) == 0


def test_a_body_is_requeued_when_even_rejecting_fails_while_stopping(guard,
                                                                     lock_database):
    guard_, _ = guard
    lock_database()
    guard_._endpoint.stop()
    raw = FakeKombuMessage(b'garbage')
    guard_(raw)
    assert raw.settled == 'requeue'


class Operations:
    """The poller's MessageOperationsHandler: tasks for the polling thread."""

    def __init__(self):
        self.tasks = []

    def do(self, task):
        self.tasks.append(task)


def test_a_body_is_held_off_the_polling_thread_while_rejecting_fails(endpoint, engine,
                                                                     lock_database):
    operations = Operations()
    guard_ = listener.RawMessageGuard(FakeConsumer(), endpoint, 4096, operations)
    conn = lock_database()
    raw = FakeKombuMessage(b'garbage')
    began = time.monotonic()
    guard_(raw)  # returns after one attempt: the polling thread goes on
    assert time.monotonic() - began < 1 and raw.settled is None
    time.sleep(0.3)
    assert endpoint.drain(0) == 1 and operations.tasks == []
    conn.execute('ROLLBACK')
    wait_for(lambda: operations.tasks)
    operations.tasks[0]()  # on the polling thread
    assert raw.settled == 'ack' and count(engine, models.rejected) == 1
    assert endpoint.drain(1) == 0 and endpoint.counts['requeued'] == 0


# --- the whole listener over oslo.messaging's fake:// transport ----------------------

@pytest.fixture
def transport():
    conf = cfg.ConfigOpts()
    conf([])
    exchange = 'audit-unit-%s' % uuid.uuid4().hex[:8]
    messaging.set_transport_defaults(control_exchange=exchange)
    transport = messaging.get_notification_transport(conf, url='fake://')
    yield transport
    messaging.set_transport_defaults(control_exchange=rpc.DEFAULT_EXCHANGE)
    transport.cleanup()


def wait_for(predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, 'timed out'
        time.sleep(0.02)


def test_published_notifications_are_stored_and_duplicates_ignored(transport, endpoint,
                                                                   engine):
    server = listener.get_listener(transport, rpc.NOTIFICATION_TOPIC, endpoint,
                                   'audit-unit', 65536, batch_size=8, batch_timeout=0.05)
    server.start()
    try:
        publisher = testing.Publisher(transport)
        start = testing.payload('attach', 'start', request_id='req-fake')
        publisher.notify('attach', 'start', start)
        end = testing.message('attach', 'error', testing.payload(
            'attach', 'error', **dict(start['attachworker_object.data'],
                                      fault=testing.fault())))
        publisher.send(end)
        publisher.send(end)
        wait_for(lambda: sum(endpoint.counts.values()) == 3)
    finally:
        server.stop()
        server.wait()
    assert count(engine, models.events) == 2
    [op] = rows(engine, models.operations)
    assert (op['request_id'], op['outcome'], op['events_count']) == ('req-fake', 'error', 2)
    assert endpoint.counts['duplicate'] == 1


def test_a_message_held_during_an_outage_is_stored_once_after(transport, endpoint,
                                                                  engine, lock_database):
    server = listener.get_listener(transport, rpc.NOTIFICATION_TOPIC, endpoint,
                                   'audit-unit', 65536, batch_size=8, batch_timeout=0.05)
    conn = lock_database()
    server.start()
    try:
        testing.Publisher(transport).notify('attach', 'start', testing.payload())
        wait_for(lambda: endpoint.held == 1)
        time.sleep(0.5)
        conn.execute('ROLLBACK')
        wait_for(lambda: endpoint.counts['stored'] == 1)
        assert endpoint.counts['requeued'] == 0 and endpoint.held == 1
    finally:
        server.stop()
        server.wait()
    assert count(engine, models.events) == 1


@pytest.mark.parametrize('depth', [1990, 5000], ids=['small', 'oversized'])
def test_a_body_nested_too_deep_to_decode_is_rejected_and_acked(guard, engine, depth):
    """json.loads raises RecursionError, not ValueError, past Python's recursion limit."""
    guard_, consumer = guard
    raw = FakeKombuMessage(b'[' * depth + b']' * depth)  # max_size is 4096
    guard_(raw)
    assert raw.settled == 'ack' and consumer.taken == []
    [rejected] = rows(engine, models.rejected)
    assert rejected['size'] == 2 * depth
    assert rejected['message_id'] is None

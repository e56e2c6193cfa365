"""``[worker] workers = N``: the main process's side (children, hand-back on death,
stop), the child's side (acks once journalled, hands back what it did not start), the
outbox flush of the main process, and casts routed by the RPC server."""
import socket
import sys
import textwrap
import threading
import time
import uuid

import oslo_messaging as messaging
import pytest

from attachworker import rpc
from attachworker.worker import child as aw_child
from attachworker.worker import router
from attachworker.worker import slot
from attachworker.worker import workers

GOOD = '8f0e3c4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b'

#: A stand-in child: speaks the pipe protocol, logs each cast it gets as
#: ``<pid> <unique_id>``. The first one (no marker file yet) acknowledges two casts
#: and dies at its fourth, without acknowledging the third and fourth.
FAKE_CHILD = textwrap.dedent('''
    import os, sys
    from multiprocessing.connection import Connection
    index, count, fd = map(int, os.environ['ATTACHWORKER_WORKER_CHILD'].split())
    conn = Connection(fd)
    log, marker = sys.argv[1], sys.argv[2]
    first = not os.path.exists(marker)
    open(marker, 'a').close()
    conn.send(('ready',))
    got = 0
    while True:
        try:
            message = conn.recv()
        except EOFError:
            sys.exit(3)
        if message[0] == 'control':
            sys.exit(0)
        got += 1
        with open(log, 'a') as f:
            f.write('%d %s\\n' % (os.getpid(), message[4]))
        if first and got == 4:
            os._exit(1)
        if not first or got <= 2:
            conn.send(('ack', message[1]))
''')


#: Acknowledges every cast but ``poison``, which kills it before it is journalled.
POISON_CHILD = textwrap.dedent('''
    import os, sys
    from multiprocessing.connection import Connection
    conn = Connection(int(os.environ['ATTACHWORKER_WORKER_CHILD'].split()[2]))
    conn.send(('ready',))
    while True:
        message = conn.recv()
        if message[0] == 'control':
            sys.exit(0)
        with open(sys.argv[1], 'a') as f:
            f.write('%d %s\\n' % (os.getpid(), message[4]))
        if message[4] == 'poison':
            os._exit(1)
        conn.send(('ack', message[1]))
''')


class Incoming:
    def __init__(self, unique_id, acks, requeued=()):
        self.message = {'method': 'attach_volume',
                        'args': {'instance': {'uuid': GOOD}, 'volume_id': GOOD}}
        self.ctxt = {'request_id': 'req-%s' % unique_id}
        self.unique_id = unique_id
        self.deferred_ack = lambda: acks.append(unique_id)
        self.deferred_requeue = lambda: list.append(requeued, unique_id)


def wait_for(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.fixture
def fake_children(tmp_path):
    log, marker = tmp_path / 'casts.log', tmp_path / 'marker'
    recovered = []
    sup = workers.Supervisor(1, ['prog', str(log), str(marker)],
                             lambda stop: recovered.append(time.monotonic()),
                             command=[sys.executable, '-c', FAKE_CHILD])
    sup.log, sup.recovered = log, recovered
    yield sup
    sup.stop()
    if not sup.wait(10):
        sup.kill()


def lines(path):
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def test_a_dead_childs_unacknowledged_casts_go_to_its_successor_in_order(fake_children):
    sup, acks = fake_children, []
    assert sup.start(threading.Event())
    for n in range(6):
        sup.route(Incoming('u%d' % n, acks))
    wait_for(lambda: len(acks) == 6)
    got = lines(sup.log)
    first, second = got[0][0], got[-1][0]
    assert first != second  # the child died and was replaced
    # the first got (at least) u0..u3 and acknowledged u0, u1; its successor got the
    # others, in cast order, and nothing twice that had been acknowledged
    assert [u for pid, u in got if pid == first][:4] == ['u0', 'u1', 'u2', 'u3']
    assert [u for pid, u in got if pid == second] == ['u2', 'u3', 'u4', 'u5']
    assert sorted(acks) == ['u%d' % n for n in range(6)]
    assert len(sup.recovered) == 1  # recovery ran before the successor took the casts
    assert sup.alive()


def test_a_cast_that_kills_every_child_goes_back_to_the_broker(tmp_path, monkeypatch):
    monkeypatch.setattr(slot, 'RESTART_DELAY', 0.01)
    log, acks, requeued, recovered = tmp_path / 'casts.log', [], [], []
    sup = workers.Supervisor(1, ['prog', str(log)], recovered.append,
                             command=[sys.executable, '-c', POISON_CHILD])
    try:
        assert sup.start(threading.Event())
        for unique_id in ('u0', 'poison', 'u1', 'u2'):
            sup.route(Incoming(unique_id, acks, requeued))
        wait_for(lambda: len(acks) == 3)
        assert requeued == ['poison'] and sorted(acks) == ['u0', 'u1', 'u2']
        got = lines(log)
        deaths = [pid for pid, u in got if u == 'poison']
        assert len(deaths) == slot.MAX_HANDBACKS == len(recovered)
        # after the first death, the poison went alone to each successor: the others
        # were handed back once at most, and u1, u2 kept their order
        assert [u for _, u in got].count('u1') <= 2
        assert [u for pid, u in got if pid not in deaths] == ['u1', 'u2']
    finally:
        sup.stop()
        assert sup.wait(10)


def test_stop_ends_every_child_and_nothing_is_restarted(fake_children):
    sup = fake_children
    open(str(sup.log).replace('casts.log', 'marker'), 'a').close()  # never die
    assert sup.start(threading.Event())
    pids = [slot.proc.pid for slot in sup.slots]
    sup.stop()
    assert sup.wait(10)
    assert not sup.alive()
    assert [slot.proc.pid for slot in sup.slots] == pids
    assert sup.slots[0].proc.returncode == 0
    assert sup.recovered == []


def test_a_child_that_cannot_start_fails_the_start(tmp_path):
    sup = workers.Supervisor(2, ['prog'], lambda stop: None,
                             command=[sys.executable, '-c', 'import sys; sys.exit(1)'])
    assert not sup.start(threading.Event())
    assert sup.failed.is_set()
    assert sup.wait(10)


def test_the_start_gives_up_at_a_signal(tmp_path):
    sup = workers.Supervisor(1, ['prog'], lambda stop: None,
                             command=[sys.executable, '-c', 'import time; time.sleep(60)'])
    stop = threading.Event()
    stop.set()
    assert not sup.start(stop)
    sup.kill()
    assert sup.wait(10)


# --- the child's side -------------------------------------------------------------------
class Dispatcher:
    def __init__(self):
        self.seen = []

    def dispatch(self, incoming):
        self.seen.append((incoming.unique_id, incoming.ctxt, incoming.message))
        incoming.deferred_ack()


@pytest.fixture
def child(conf, make_manager):
    ours, theirs = socket.socketpair()
    manager = make_manager()
    service = aw_child.ChildService(slot.connection(theirs.detach()), Dispatcher(),
                                    manager, manager._outbox, conf, 0, 2)
    service._fifo = router.KeyedFifo(_Inline())
    service.main_end = slot.connection(ours.detach())
    yield service
    service.main_end.close()


class _Inline:
    def submit(self, fn, *args):
        fn(*args)


def test_a_child_acknowledges_what_it_ran(child):
    child._take(7, {'request_id': 'r'}, {'args': {'instance': {'uuid': GOOD}}}, 'u-7')
    assert child._dispatcher.seen == [('u-7', {'request_id': 'r'},
                                       {'args': {'instance': {'uuid': GOOD}}})]
    assert child.main_end.recv() == ('ack', 7)


def test_a_stopping_child_hands_back_what_it_has_not_started(child):
    child._stop.set()
    child._take(8, {}, {}, 'u-8')
    child._run_cast(9, {}, {}, 'u-9')
    assert child._dispatcher.seen == []
    assert not child.main_end.poll(0.1)  # nothing acknowledged


def test_a_child_stops_when_the_main_process_is_gone(child):
    child.main_end.close()
    reader = threading.Thread(target=child._read)
    reader.start()
    reader.join(10)
    assert child._stop.is_set()


def test_the_main_process_forwards_stop_then_abort(child, monkeypatch):
    exits = []
    monkeypatch.setattr(child, '_exit_now', lambda: exits.append(True))  # the last resort
    child._control('stop')
    assert child._stop.is_set() and not child._manager.abort.is_set()
    child._control('stop')  # the same signal twice (a process group): one stop
    assert not child._manager.abort.is_set()
    child._control('abort')
    assert child._manager.abort.is_set()


def test_a_routed_cast_runs_through_the_dispatcher_and_the_manager(conf, make_manager,
                                                                   cinder_mock, ctxt,
                                                                   notifications):
    """RoutedIncoming is enough for the real Dispatcher: journalled, then acked."""
    manager = make_manager()
    dispatcher = rpc.get_dispatcher(manager, manager.reject)
    acked = []
    message = {'method': 'attach_volume', 'version': '1.0',
               'args': {'instance': {'uuid': GOOD}, 'volume_id': cinder_mock.volume_id,
                        'mountpoint': '/dev/vdb'}}
    unique_id = uuid.uuid4().hex

    def ack():
        acked.append(manager._journal.known_cast(unique_id))
    dispatcher.dispatch(router.RoutedIncoming(ctxt.to_dict(), message, unique_id, ack))
    assert acked == [True]  # acknowledged once journalled
    assert [e for e, _, _, _ in notifications()] == ['instance.volume_attach.start',
                                                      'instance.volume_attach.end']
    # the same cast again (the main process handed it to a successor): dropped, acked
    dispatcher.dispatch(router.RoutedIncoming(ctxt.to_dict(), message, unique_id, ack))
    assert acked == [True, True] and len(notifications()) == 2
    # a malformed one: refused by validation, with its .error, and acked
    bad = dict(message, args={'instance': 'nope', 'volume_id': GOOD})
    dispatcher.dispatch(router.RoutedIncoming(ctxt.to_dict(), bad, 'u-bad', ack))
    assert len(acked) == 3
    assert notifications()[-1][0] == 'instance.volume_attach.error'


# --- the main process: its outbox flush, the RPC server ---------------------------------
def test_the_main_process_leaves_young_outbox_rows_to_living_children(conf):
    journal = workers.SettledJournal(conf.state_path)
    try:
        journal.queue_notification('volume_attach', 'start', {'request_id': 'r'}, None, {})
        journal.children_alive = lambda: True
        assert list(journal.unsent()) == []
        journal.children_alive = lambda: False
        assert [row['phase'] for row in journal.unsent()] == ['start']
        journal.children_alive = lambda: True
        old = time.time() - workers.SETTLE - 1
        journal._write('UPDATE outbox SET created_at=?', old)
        assert [row['phase'] for row in journal.unsent()] == ['start']
    finally:
        journal.close()


class Endpoint:
    target = messaging.Target(version='1.3')
    RPC_METHODS = {'attach_volume': 'volume_attach', 'reserve_block_device_name': None}

    def __init__(self):
        self.ran = []

    def attach_volume(self, ctxt, **kwargs):
        self.ran.append('attach_volume')

    def reserve_block_device_name(self, ctxt, **kwargs):
        self.ran.append('reserve_block_device_name')
        return '/dev/vdc'


def test_the_rpc_server_routes_casts_and_answers_calls_itself(global_conf, ctxt):
    transport = messaging.get_rpc_transport(global_conf, url='fake:///')
    endpoint, routed = Endpoint(), []
    server = rpc.get_rpc_server(transport, 'compute-unit', endpoint, lambda *a: None,
                                route=routed.append)
    server.start()
    try:
        client = messaging.get_rpc_client(
            transport, messaging.Target(topic=rpc.TOPIC, server='compute-unit'),
            serializer=rpc.RequestContextSerializer())
        client.cast(ctxt, 'attach_volume', instance={'uuid': GOOD}, volume_id=GOOD)
        assert client.call(ctxt, 'reserve_block_device_name', instance={'uuid': GOOD},
                           volume_id=GOOD) == '/dev/vdc'
        wait_for(lambda: routed)
        assert routed[0].message['method'] == 'attach_volume'
        assert endpoint.ran == ['reserve_block_device_name']  # the cast went to route
    finally:
        server.stop()
        server.wait()
        transport.cleanup()

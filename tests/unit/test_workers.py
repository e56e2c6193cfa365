"""``[worker] workers = N``: routing by instance, and the per-instance FIFO (router)."""
import concurrent.futures
import os
import pickle
import random
import subprocess
import sys
import threading
import time
import uuid

import pytest

from attachworker.worker import router
from attachworker.worker import workers

INSTANCE = '8f0e3c4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b'


def cast(instance=INSTANCE, **extra):
    return {'method': 'attach_volume', 'version': '1.0',
            'args': dict({'instance': {'uuid': instance}, 'volume_id': str(uuid.uuid4())},
                         **extra)}


# --- the route key and the hash --------------------------------------------------------
def test_route_key_is_the_canonical_instance_uuid():
    assert router.route_key(cast()) == INSTANCE
    # every spelling validation accepts routes like the canonical one
    assert router.route_key(cast(INSTANCE.upper())) == INSTANCE
    assert router.route_key(cast(INSTANCE.replace('-', ''))) == INSTANCE
    assert router.route_key(cast('{%s}' % INSTANCE)) == INSTANCE


@pytest.mark.parametrize('message', [
    None, 'text', {}, {'args': None}, {'args': {}}, {'args': {'instance': None}},
    {'args': {'instance': 'not-a-dict'}}, {'args': {'instance': {}}},
    {'args': {'instance': {'uuid': 42}}}, {'args': {'instance': {'uuid': 'nope'}}},
    {'args': {'instance': {'uuid': 'x' * (1 << 20)}}},
    {'args': {'instance': {'uuid': 'vm-\ud800'}}},
])
def test_a_cast_without_a_readable_instance_uuid_has_no_route_key(message):
    assert router.route_key(message) is None


def test_slot_is_stable_across_processes():
    """Python's str hash differs per process; the slot must not."""
    keys = [str(uuid.UUID(int=n)) for n in range(0, 2 ** 128, 2 ** 121)]
    here = [router.slot_of(k, 3) for k in keys]
    code = ('import sys; from attachworker.worker import router; '
            'print([router.slot_of(k, 3) for k in sys.argv[1:]])')
    for seed in ('1', '2'):
        out = subprocess.run([sys.executable, '-c', code, *keys], capture_output=True,
                             text=True, check=True,
                             env=dict(os.environ, PYTHONHASHSEED=seed)).stdout
        assert out.strip() == str(here)
    assert set(here) == {0, 1, 2}  # and it spreads


def test_slot_spreads_instances_evenly():
    counts = [0, 0]
    for _ in range(2000):
        counts[router.slot_of(str(uuid.uuid4()), 2)] += 1
    assert min(counts) > 800


# --- the supervisor's routing (no child is started) ------------------------------------
class Incoming:
    def __init__(self, message, unique_id=None):
        self.message = message
        self.ctxt = {'auth_token': 'tok', 'request_id': 'req-1'}
        self.unique_id = unique_id or uuid.uuid4().hex
        self.deferred_ack = lambda: None


class LoudDict(dict):
    """Like the rabbit driver's message: a dict holding something unpicklable."""

    def __init__(self, *args):
        super().__init__(*args)
        self.raw = threading.Lock()


@pytest.fixture
def supervisor():
    sup = workers.Supervisor(3, ['attachworker-compute'], lambda stop: None)
    queued = {slot.index: [] for slot in sup.slots}
    for slot in sup.slots:
        slot.put = queued[slot.index].append
    sup.queued = queued
    return sup


def test_every_cast_of_an_instance_goes_to_the_same_child(supervisor):
    instances = [str(uuid.uuid4()) for _ in range(20)]
    for _ in range(5):
        for instance in instances:
            supervisor.route(Incoming(cast(random.choice(
                [instance, instance.upper(), instance.replace('-', '')]))))
    for index, items in supervisor.queued.items():
        for item in items:
            assert router.slot_of(router.route_key(item.message), 3) == index
    where = {}
    for index, items in supervisor.queued.items():
        for item in items:
            where.setdefault(router.route_key(item.message), set()).add(index)
    assert all(len(slots) == 1 for slots in where.values())
    tokens = [i.token for items in supervisor.queued.values() for i in items]
    assert len(set(tokens)) == 100


def test_malformed_casts_go_to_every_child_in_turn(supervisor):
    for message in (cast('nope'), {'method': 'attach_volume'}, cast(None), cast(42),
                    {'args': 'x'}, cast('nope')):
        supervisor.route(Incoming(message))
    assert [len(items) for items in supervisor.queued.values()] == [2, 2, 2]


def test_what_goes_to_a_child_is_plain_data_and_keeps_the_ack(supervisor):
    incoming = Incoming(LoudDict(cast()), unique_id='u-1')
    acked = []
    incoming.deferred_ack = lambda: acked.append(True)
    supervisor.route(incoming)
    (item,) = [i for items in supervisor.queued.values() for i in items]
    wire = pickle.loads(pickle.dumps(item.wire()))
    assert wire[0] == 'cast' and wire[2:] == (incoming.ctxt, dict(incoming.message), 'u-1')
    item.ack()
    assert acked == [True]


# --- the per-instance FIFO ---------------------------------------------------------------
@pytest.fixture
def pool():
    executor = concurrent.futures.ThreadPoolExecutor(8)
    yield executor
    executor.shutdown(wait=True)


def test_the_calls_of_one_key_run_one_at_a_time_in_submission_order(pool):
    fifo = router.KeyedFifo(pool)
    ran, running, overlap = {}, {}, []
    lock = threading.Lock()

    def call(key, n):
        with lock:
            if running.get(key):
                overlap.append(key)
            running[key] = True
        time.sleep(random.random() / 500)
        with lock:
            running[key] = False
            ran.setdefault(key, []).append(n)

    keys = ['a', 'b', 'c', 'd']
    for n in range(50):
        for key in keys:
            fifo.submit(key, call, key, n)
    assert fifo.wait_idle(30)
    assert not overlap
    assert all(ran[key] == list(range(50)) for key in keys)
    assert fifo.pending == 0


def test_keys_run_in_parallel(pool):
    fifo = router.KeyedFifo(pool)
    both = threading.Barrier(2, timeout=10)
    done = []
    for key in ('a', 'b'):
        fifo.submit(key, lambda k=key: done.append((k, both.wait())))
    assert fifo.wait_idle(10)
    assert sorted(k for k, _ in done) == ['a', 'b']  # neither waited for the other


def test_calls_without_a_key_are_not_ordered_with_each_other(pool):
    fifo = router.KeyedFifo(pool)
    both = threading.Barrier(2, timeout=10)
    done = []
    for n in range(2):
        fifo.submit(None, lambda n=n: done.append((n, both.wait())))
    assert fifo.wait_idle(10)
    assert len(done) == 2


def test_a_failing_call_does_not_stop_its_key(pool):
    fifo = router.KeyedFifo(pool)
    ran = []

    def boom():
        raise RuntimeError('boom')
    fifo.submit('a', boom)
    fifo.submit('a', ran.append, 2)
    assert fifo.wait_idle(10)
    assert ran == [2]


def test_a_busy_key_takes_turns_with_the_others():
    """One thread: the queued calls of a key do not all run before another key's."""
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        fifo = router.KeyedFifo(executor)
        ran = []
        gate = threading.Event()
        fifo.submit('a', gate.wait)
        for n in range(3):
            fifo.submit('a', ran.append, 'a%d' % n)
        fifo.submit('b', ran.append, 'b0')
        gate.set()
        assert fifo.wait_idle(10)
    assert ran.index('b0') < ran.index('a2')
    assert [r for r in ran if r.startswith('a')] == ['a0', 'a1', 'a2']


def test_wait_idle_times_out_while_a_call_runs(pool):
    fifo = router.KeyedFifo(pool)
    gate = threading.Event()
    fifo.submit('a', gate.wait)
    assert not fifo.wait_idle(0.05)
    assert fifo.pending == 1
    gate.set()
    assert fifo.wait_idle(10)

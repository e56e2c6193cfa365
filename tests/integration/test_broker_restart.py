"""RabbitMQ restarted in the middle of a burst of 200 casts.

A controller casts one attach every ``CAST_INTERVAL`` s (one volume each, 20
instances, no mountpoint) to a worker with 8 threads. After ``RESTART_AFTER`` casts
RabbitMQ is stopped (``rabbitmqctl stop_app``: every connection is cut, transient
queues are lost) and started again ``OUTAGE`` s later, while the controller goes on
casting (a cast blocks while the broker is down and is sent once it is back) up to
``HOLD_AFTER`` casts; the rest it casts once the cloud serves again.

Worker, controller and watcher run in a vhost of their own with
``[oslo_messaging_rabbit] amqp_durable_queues = true``: the exchange, the worker's
queue and the watcher's named queue (and the persistent messages in them) survive
the restart. With transient queues a cast sent after the broker came back, but
before the worker had declared its queue again, would be routed nowhere.

Cinder's own services reconnect to RabbitMQ by themselves, and lose a cast or two
meanwhile. So "sent after the broker returned" means sent after a volume create and
an attachment create/delete worked again: what Cinder fails to do while it
reconnects is not the worker's doing. Afterwards:

* the worker is the process it was, started once;
* every cast sent after the broker returned ends ``.end`` and its volume is in-use,
  attached to its instance;
* every cast the worker started (journal, or a ``.start`` seen) has exactly one
  terminal notification (de-duplicated on ``message_id``), and it agrees with
  the journal; ``.end`` means in-use, ``.error`` means available;
* no volume is reserved, attaching or error_attaching; no notification is left
  unsent in the outbox.
"""
import collections
import contextlib
import socket
import sqlite3
import subprocess
import threading
import time
import uuid

import pytest

from attachworker import outcome
from tests.harness import Controller
from tests.integration.conftest import caller_context

BURST = 200
INSTANCES = 20
THREADS = 8
CAST_INTERVAL = 0.1
RESTART_AFTER = 60
HOLD_AFTER = 100
OUTAGE = 10
STUCK = {'reserved', 'attaching', 'error_attaching'}
TERMINAL = ('.end', '.error')
CONNECTOR = {'host': 'broker-restart-probe', 'ip': '127.0.0.1', 'multipath': False,
             'platform': 'x86_64', 'os_type': 'linux',
             'initiator': 'iqn.1993-08.org.debian:01:brokerprobe'}


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(['rabbitmqctl', *args], check=True, capture_output=True,
                          text=True, timeout=180).stdout


def broker_accepts() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(('127.0.0.1', 5672), 1):
        return True
    return False


def start_broker() -> None:
    """start_app (a no-op when running), then wait until it serves on 5672."""
    rabbitmqctl('start_app')
    rabbitmqctl('await_startup')
    deadline = time.monotonic() + 60
    while not broker_accepts():
        assert time.monotonic() < deadline, 'RabbitMQ does not accept on 5672'
        time.sleep(0.2)


@pytest.fixture
def vhost():
    """A vhost of our own: durable queues of this test never meet anybody else's."""
    name = 'attachworker-restart-%s' % uuid.uuid4().hex[:8]
    rabbitmqctl('add_vhost', name)
    rabbitmqctl('set_permissions', '-p', name, 'guest', '.*', '.*', '.*')
    yield name
    start_broker()  # whatever happened, the shared broker is left running
    rabbitmqctl('delete_vhost', name)


class Journal:
    """The worker's journal, read-only (safe while the worker writes it)."""

    def __init__(self, worker) -> None:
        self._path = worker.state / 'journal.sqlite'

    def _query(self, sql: str) -> list:
        with contextlib.closing(sqlite3.connect('file:%s?mode=ro' % self._path,
                                                uri=True, timeout=30)) as db:
            return db.execute(sql).fetchall()

    def operations(self) -> dict:
        """{request_id: [state of each operation]}"""
        ops: dict = collections.defaultdict(list)
        for request_id, state in self._query('SELECT request_id, state FROM operations'):
            ops[request_id].append(state)
        return dict(ops)

    def unsent(self) -> int:
        return self._query('SELECT count(*) FROM outbox WHERE sent_at IS NULL')[0][0]


class OutboxSampler(threading.Thread):
    """Counts the unsent notifications twice a second: (monotonic time, count)."""

    def __init__(self, journal: Journal) -> None:
        super().__init__(name='outbox-sampler', daemon=True)
        self._journal = journal
        self.samples: list = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.samples.append((time.monotonic(), self._journal.unsent()))

    def drained_at(self, since: float) -> float:
        """When the outbox was first empty again at or after ``since``."""
        return next((t for t, n in self.samples if t >= since and n == 0), float('nan'))


class Outcomes:
    """Notifications per request, de-duplicated on message_id (at-least-once)."""

    def __init__(self, watcher) -> None:
        self._watcher = watcher

    def collect(self) -> dict:
        """{request_id: [event type of each distinct notification]}"""
        seen: dict = collections.defaultdict(dict)
        for note in self._watcher.events():
            seen[outcome.request_id_of(note)][note['message_id']] = note['event_type']
        return {r: list(events.values()) for r, events in seen.items()}

    def faults(self) -> dict:
        """{(step, exception): count} over the distinct .error notifications."""
        errors = {n['message_id']: n['payload']['attachworker_object.data']['fault']
                  for n in self._watcher.events() if n['event_type'].endswith('.error')}
        return dict(collections.Counter((f['step'], f['exception'])
                                        for f in errors.values()))

    def duplicates(self) -> int:
        ids = [n['message_id'] for n in self._watcher.events()]
        return len(ids) - len(set(ids))


def terminals(events: list) -> list:
    return [e.rsplit('.', 1)[1] for e in events if e.endswith(TERMINAL)]


def wait_cinder_serves(volumes, admin_cinder, timeout: float = 300) -> float:
    """Until a volume create and an attachment create/delete work: Cinder's RPC is back.

    Returns the seconds it took. An attempt whose cast Cinder lost while its services
    reconnected hangs in 'creating': the next attempt uses a new volume.
    """
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        try:
            volume_id = volumes.create()
            volumes.wait_available([volume_id], timeout=15)
            attachment = admin_cinder.attachments.create(volume_id, CONNECTOR,
                                                         str(uuid.uuid4()))
            admin_cinder.attachments.delete(attachment['id'])
            return time.monotonic() - t0
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            if time.monotonic() > deadline:
                raise AssertionError('Cinder does not serve again after the restart') \
                    from exc
            print('Cinder not serving yet: %s' % exc)
            time.sleep(2)


class Burst(threading.Thread):
    """Casts one attach every CAST_INTERVAL s; records when each call began and ended.

    After HOLD_AFTER casts it waits for ``resume`` to be set.
    """

    def __init__(self, ctl, worker, contexts, volume_ids) -> None:
        super().__init__(name='burst', daemon=True)
        self._ctl = ctl
        self._worker = worker
        self._jobs = list(zip(contexts, volume_ids, strict=True))
        self._instances = [str(uuid.uuid4()) for _ in range(INSTANCES)]
        self.casts: list = []
        self.resume = threading.Event()

    def run(self) -> None:
        for n, (ctxt, volume_id) in enumerate(self._jobs):
            if n == HOLD_AFTER:
                self.resume.wait()
            instance = {'uuid': self._instances[n % INSTANCES],
                        'project_id': ctxt.project_id}
            called = time.monotonic()
            error = None
            try:
                self._ctl.api.attach_volume(ctxt, self._worker.host, instance, volume_id)
            except Exception as exc:  # noqa: BLE001 - a cast that raised was not sent
                error = exc
            self.casts.append({'request_id': ctxt.request_id, 'volume_id': volume_id,
                               'instance_uuid': instance['uuid'], 'called': called,
                               'returned': time.monotonic(), 'error': error})
            time.sleep(CAST_INTERVAL)


@pytest.mark.slow
def test_rabbitmq_restart_during_a_burst_of_200_casts(vhost, make_worker, volumes,
                                                      sessions, admin_cinder):
    worker = make_worker(
        transport_url='rabbit://guest:guest@127.0.0.1:5672/%s' % vhost,
        executor_thread_pool_size=str(THREADS),
        oslo_messaging_rabbit__amqp_durable_queues='true')
    pid = worker.proc.pid
    ctl = Controller(worker, watch_queue='attachworker-watch-%s' % vhost)
    try:
        _run(worker, pid, ctl, volumes, sessions, admin_cinder)
    finally:
        start_broker()
        ctl.close()


def _run(worker, pid, ctl, volumes, sessions, admin_cinder) -> None:
    journal = Journal(worker)
    outcomes = Outcomes(ctl.watcher)
    volume_ids = volumes.make(BURST)
    contexts = [caller_context(sessions['demo']) for _ in range(BURST)]
    sampler = OutboxSampler(journal)
    sampler.start()
    burst = Burst(ctl, worker, contexts, volume_ids)
    burst.start()

    # --- the restart, in the middle of the burst --------------------------------------
    while len(burst.casts) < RESTART_AFTER:
        ctl.watcher.events()
    t_down = time.monotonic()
    rabbitmqctl('stop_app')
    time.sleep(OUTAGE)
    start_broker()
    t_back = time.monotonic()
    cinder_delay = wait_cinder_serves(volumes, admin_cinder)
    t_ready = time.monotonic()
    burst.resume.set()
    burst.join(timeout=BURST * CAST_INTERVAL + 300)
    assert not burst.is_alive(), 'the controller could not cast any more'

    sent = {c['request_id']: c for c in burst.casts if c['error'] is None}
    before = {r for r, c in sent.items() if c['returned'] < t_down}
    after = {r for r, c in sent.items() if c['called'] >= t_ready}
    during = set(sent) - before - after
    raised = [c for c in burst.casts if c['error'] is not None]

    # --- wait for the outcomes ----------------------------------------------------------
    # Until every cast sent has one and the worker is idle, or until the worker has
    # been idle for 15 s (a cast lost by the broker never gets one).
    deadline = time.monotonic() + 600
    idle_since, last = time.monotonic(), None
    while time.monotonic() < deadline:
        seen, ops = outcomes.collect(), journal.operations()
        busy = any('running' in states for states in ops.values()) or journal.unsent()
        if not busy and all(terminals(seen.get(r, [])) for r in sent):
            break
        if busy or (seen, ops) != last:
            idle_since, last = time.monotonic(), (seen, ops)
        elif time.monotonic() - idle_since > 15:
            break
        time.sleep(0.5)
    t_done = time.monotonic()
    sampler.stop.set()
    seen, ops = outcomes.collect(), journal.operations()

    def tally(request_ids):
        return dict(collections.Counter(
            '+'.join(terminals(seen.get(r, []))) or 'none' for r in request_ids))

    print('\nRabbitMQ restart during a burst of %d casts (%d threads, %d instances):'
          % (BURST, THREADS, INSTANCES))
    print('  outage %.1f s (stop_app until accepting again); Cinder served again %.1f s '
          'later' % (t_back - t_down, cinder_delay))
    print('  casts sent before the outage %d %s, during it %d %s, after it %d %s; '
          'raised %d' % (len(before), tally(before), len(during), tally(during),
                         len(after), tally(after), len(raised)))
    print('  journal: %d operations %s; faults %s' % (
        sum(map(len, ops.values())),
        dict(collections.Counter(s for states in ops.values() for s in states)),
        outcomes.faults()))
    print('  outbox: %d notifications unsent at most; empty again %.1f s after the '
          'broker returned' % (max((n for _, n in sampler.samples), default=0),
                               sampler.drained_at(t_back) - t_back))
    print('  every outcome in %.1f s after the broker returned; reconnects: worker %d '
          '(logged), watcher %d; duplicate deliveries %d'
          % (t_done - t_back, worker.logs().count('Reconnected to AMQP server'),
             ctl.watcher.reconnects, outcomes.duplicates()))

    # --- the worker rode it out ---------------------------------------------------------
    assert worker.proc.poll() is None and worker.proc.pid == pid, worker.logs()[-3000:]
    assert worker.logs().count('attachworker-compute ready') == 1
    assert journal.unsent() == 0

    volume = {vid: admin_cinder.volumes.get(vid) for vid in volume_ids}
    problems = []
    for request_id, cast in sent.items():
        events = seen.get(request_id, [])
        ends = terminals(events)
        started = request_id in ops or 'instance.volume_attach.start' in events
        if request_id in after and ends != ['end']:
            problems.append(('sent after the restart, not attached', request_id, events))
        if started and len(ends) != 1:
            problems.append(('started, not exactly one outcome', request_id, events))
        if request_id in ops:
            states = ops[request_id]
            if ends != ['end' if s == 'completed' else 'error' for s in states]:
                problems.append(('journal disagrees', request_id, states, events))
        v = volume[cast['volume_id']]
        if ends == ['end'] and not (v.status == 'in-use' and [
                a['server_id'] for a in v.attachments] == [cast['instance_uuid']]):
            problems.append(('.end, not attached to its instance', request_id, v.status))
        if ends == ['error'] and v.status != 'available':
            problems.append(('.error, not available', request_id, v.status))
    stuck = {vid: v.status for vid, v in volume.items() if v.status in STUCK}
    assert not stuck, stuck
    assert not problems, problems

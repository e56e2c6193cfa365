"""kill -9 with a backlog, two processes on one host, poison input (issue 8).

Over the real RabbitMQ, against the Cinder stand-in. Each test is judged by what
the controller sees (exactly one outcome per cast, counted by event id, since an
outbox resend after a kill is the same event) and by the stand-in's volumes
(nothing left ``reserved`` or ``attaching``).
"""
import collections
import os
import signal
import sqlite3
import subprocess
import time
import uuid

from attachworker import context as aw_context
from tests.harness import BIN

PROJECT = uuid.uuid4().hex


def caller():
    return aw_context.RequestContext(auth_token='tok-%s' % uuid.uuid4().hex,
                                     user_id='u1', project_id=PROJECT, roles=['member'])


def outcomes_by_request(ctl):
    """{request_id: set of distinct terminal event ids (message_id)}, and event types."""
    terminal, kinds = collections.defaultdict(set), {}
    for note in ctl.watcher.events():
        if note['event_type'].endswith(('.end', '.error')):
            rid = note['payload']['attachworker_object.data']['request_id']
            terminal[rid].add(note['message_id'])
            kinds.setdefault(rid, set()).add(note['event_type'])
    return terminal, kinds


def wait_until(predicate, timeout, what, worker=None):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError('timed out waiting for %s%s' % (
                what, ('\n' + worker.logs()[-3000:]) if worker else ''))
        time.sleep(0.1)


def stuck_volumes(cinder, volume_ids):
    return {v: cinder.volume(v)['status'] for v in volume_ids
            if cinder.volume(v)['status'] not in ('available', 'in-use')}


def test_a_backlog_survives_three_kills(make_worker, controller, cinder):
    """300 casts queued; kill -9 three times while the worker works through them."""
    worker = make_worker(executor_thread_pool_size=8).start()
    ctl = controller(worker)
    worker.stop()  # the casts wait in RabbitMQ: a backlog
    cinder.fail('PUT', r'/attachments/', status=None, times=None, delay=0.2)
    casts = []
    for _ in range(300):
        ctxt, volume_id = caller(), cinder.add_volume()
        casts.append((ctxt.request_id, volume_id))
        ctl.api.attach_volume(ctxt, worker.host, {'uuid': str(uuid.uuid4())}, volume_id,
                              '/dev/vdb')
    kills = []
    for seconds in (1.5, 2.0, 2.0):
        worker.start(timeout=60)
        time.sleep(seconds)
        worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait()
        time.sleep(0.5)
        kills.append(len(outcomes_by_request(ctl)[0]))
    assert kills[-1] < 300, 'the worker was done before the last kill: %s' % kills
    worker.start(timeout=60)
    wait_until(lambda: len(outcomes_by_request(ctl)[0]) >= 300, 180, 'every outcome',
               worker)
    time.sleep(1)  # a late duplicate would show up now
    terminal, kinds = outcomes_by_request(ctl)
    counts = collections.Counter(len(terminal[rid]) for rid, _ in casts)
    in_use = sum(cinder.volume(v)['status'] == 'in-use' for _, v in casts)
    print('kill -9 x3 during 300 casts: killed at %s outcomes; outcomes per cast %s; '
          '%d attached, %d errors' % (kills, dict(counts), in_use,
                                      sum('instance.volume_attach.error' in kinds[r]
                                          for r, _ in casts)))
    assert counts == {1: 300}, counts
    assert stuck_volumes(cinder, [v for _, v in casts]) == {}
    for rid, volume_id in casts:  # the outcome says what Cinder says
        attached = cinder.volume(volume_id)['status'] == 'in-use'
        assert kinds[rid] == {'instance.volume_attach.%s' % ('end' if attached else 'error')}
    worker.stop()
    with sqlite3.connect(worker.state / 'journal.sqlite') as db:
        states = dict(db.execute('SELECT state, count(*) FROM operations GROUP BY state'))
    assert 'running' not in states and 'undo_failed' not in states, states


def test_two_processes_on_one_host_attach_each_volume_once(make_worker, controller, cinder):
    """A rolling-restart overlap: two processes, one host name, one state_path."""
    worker = make_worker(executor_thread_pool_size=8).start()
    second = worker.second_process()
    try:
        ctl = controller(worker)
        cinder.fail('PUT', r'/attachments/', status=None, times=None, delay=0.05)
        instances = [str(uuid.uuid4()) for _ in range(10)]
        volumes = [cinder.add_volume() for _ in instances]
        ids = []
        for _ in range(3):  # each attach cast three times: the duplicates race
            for instance, volume_id in zip(instances, volumes, strict=True):
                ctxt = caller()
                ids.append(ctxt.request_id)
                ctl.api.attach_volume(ctxt, worker.host, {'uuid': instance}, volume_id,
                                      '/dev/vdb')
        wait_until(lambda: len(outcomes_by_request(ctl)[0]) >= len(ids), 60,
                   'every outcome', worker)
        terminal, kinds = outcomes_by_request(ctl)
        assert all(len(terminal[r]) == 1 for r in ids)
        assert all(kinds[r] == {'instance.volume_attach.end'} for r in ids), kinds
        for instance, volume_id in zip(instances, volumes, strict=True):
            volume = cinder.volume(volume_id)
            assert volume['status'] == 'in-use'
            assert [a['instance_uuid'] for a in volume['attachments']] == [instance]
        # both processes really served casts
        pids = {line.split()[2] for line in worker.log.read_text().splitlines()
                if 'done (device' in line}
        print('two processes on one host: %d casts served by %d processes'
              % (len(ids), len(pids)))
        assert len(pids) == 2
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(60)


def test_poison_casts_get_errors_and_nothing_queued_after_them_is_lost(make_worker,
                                                                       controller, cinder):
    worker = make_worker().start()
    ctl = controller(worker)
    client = ctl.api.client.prepare(server=worker.host)
    bad_context = caller()
    bad_context.request_id = {'not': 'a string'}
    surrogate = caller()
    poison = [(bad_context, dict(instance={'uuid': str(uuid.uuid4())},
                                 volume_id=cinder.add_volume())),
              (surrogate, dict(instance={'uuid': str(uuid.uuid4()),
                                         'display_name': 'vm-\ud800'},
                               volume_id=cinder.add_volume())),
              (caller(), dict(instance={'uuid': str(uuid.uuid4())},
                              volume_id='vol-\udcff'))]
    for ctxt, args in poison:
        client.cast(ctxt, 'attach_volume', **args)
    good = []
    for _ in range(5):
        ctxt, volume_id = caller(), cinder.add_volume()
        good.append(ctxt.request_id)
        ctl.api.attach_volume(ctxt, worker.host, {'uuid': str(uuid.uuid4())}, volume_id,
                              '/dev/vdb')
    wait_until(lambda: len(outcomes_by_request(ctl)[0]) >= 8, 60, 'eight outcomes', worker)
    terminal, kinds = outcomes_by_request(ctl)
    errors = [n for n in ctl.watcher.events() if n['event_type'].endswith('.error')]
    assert len(errors) == 3
    assert {n['payload']['attachworker_object.data']['fault']['step'] for n in errors} == {
        'validate'}
    assert all(kinds[r] == {'instance.volume_attach.end'} for r in good)
    with sqlite3.connect(worker.state / 'journal.sqlite') as db:
        unsent = db.execute('SELECT count(*) FROM outbox WHERE sent_at IS NULL').fetchone()
    assert unsent == (0,)
    assert worker.proc.poll() is None


def test_sigterm_stops_a_start_up_recovery_that_hangs(make_worker, controller, cinder):
    """Finding 5: start-up recovery honours SIGTERM; the operation is left for the next
    start, which recovers it with exactly one outcome."""
    worker = make_worker().start()  # declares the host queue
    ctl = controller(worker)
    worker.stop()
    ctxt, volume_id = caller(), cinder.add_volume()
    ctl.api.attach_volume(ctxt, worker.host, {'uuid': str(uuid.uuid4())}, volume_id,
                          '/dev/vdb')
    crashed = subprocess.Popen(
        [str(BIN / 'attachworker-compute'), '--config-file', str(worker.config)],
        env=dict(os.environ, ATTACHWORKER_TEST_CRASH_AT='attachment_update:done'),
        stdout=open(worker.out, 'a'), stderr=subprocess.STDOUT)
    assert crashed.wait(60) == -9, worker.logs()[-3000:]
    assert cinder.volume(volume_id)['status'] == 'attaching'
    # Cinder now hangs on every attachment call: recovery blocks in it
    cinder.fail('*', r'/attachments/', status=None, times=None, delay=30)
    hanging = subprocess.Popen(
        [str(BIN / 'attachworker-compute'), '--config-file', str(worker.config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_until(lambda: 'Recovering volume_attach' in worker.log.read_text(), 30,
               'recovery to start', worker)
    t0 = time.monotonic()
    hanging.send_signal(signal.SIGTERM)
    assert hanging.wait(20) == 0
    stopped_in = time.monotonic() - t0
    print('SIGTERM during a hanging start-up recovery: exit after %.1f s' % stopped_in)
    assert outcomes_by_request(ctl)[0].get(ctxt.request_id) is None  # none sent yet
    with cinder._lock:
        cinder._faults.clear()
    worker.start()
    wait_until(lambda: ctxt.request_id in outcomes_by_request(ctl)[0], 60, 'the outcome',
               worker)
    terminal, kinds = outcomes_by_request(ctl)
    assert len(terminal[ctxt.request_id]) == 1
    assert kinds[ctxt.request_id] == {'instance.volume_attach.error'}
    assert cinder.volume(volume_id)['status'] == 'available'

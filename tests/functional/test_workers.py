"""``[worker] workers = 2`` over the real RabbitMQ, against the Cinder stand-in (issue 9).

Judged by what the controller sees (one terminal notification per cast, counted by
event id: an outbox resend after a kill is the same event), by the stand-in (the
order in which each cast's Cinder requests arrived, told apart by their request id,
and nothing left ``reserved`` or ``attaching``) and by the journal.
"""
import collections
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.request
import uuid

from prometheus_client.parser import text_string_to_metric_families

from attachworker import context as aw_context
from attachworker.worker import router
from tests.harness import BIN

PROJECT = uuid.uuid4().hex


def caller():
    return aw_context.RequestContext(auth_token='tok-%s' % uuid.uuid4().hex,
                                     user_id='u1', project_id=PROJECT, roles=['member'])


def terminal_events(ctl):
    """{request_id: {message_id: event_type}} of every .end/.error seen."""
    seen = collections.defaultdict(dict)
    for note in ctl.watcher.events():
        if note['event_type'].endswith(('.end', '.error')):
            rid = note['payload']['attachworker_object.data']['request_id']
            seen[rid][note['message_id']] = note['event_type']
    return seen


def wait_until(predicate, timeout, what, worker=None):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError('timed out waiting for %s%s' % (
                what, ('\n' + worker.logs()[-4000:]) if worker else ''))
        time.sleep(0.1)


def child_pids_started(worker):
    """Pids of every child the worker's log says it started, in order."""
    return [int(m) for m in re.findall(r'Started worker \d+/\d+ \(pid (\d+)\)',
                                       worker.log.read_text())]


def alive(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


def host_queue_consumers(worker):
    """[prefetch count] of each consumer of the worker's host queue (rabbitmqctl)."""
    out = subprocess.run(['rabbitmqctl', 'list_consumers', 'queue_name', 'prefetch_count',
                          '-q', '--no-table-headers'], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return [int(line.split()[1]) for line in out.splitlines()
            if line.split()[:1] == ['compute.%s' % worker.host]]


def journal_rows(worker):
    with sqlite3.connect(worker.state / 'journal.sqlite') as db:
        db.row_factory = sqlite3.Row
        rows = [dict(r) for r in db.execute('SELECT * FROM operations ORDER BY rowid')]
    for row in rows:
        row['fields'] = json.loads(row['fields'])
    return rows


def assert_journal_clean(worker):
    with sqlite3.connect(worker.state / 'journal.sqlite') as db:
        states = dict(db.execute('SELECT state, count(*) FROM operations GROUP BY state'))
        unsent = db.execute('SELECT count(*) FROM outbox WHERE sent_at IS NULL').fetchone()[0]
    assert 'running' not in states and 'undo_failed' not in states, states
    assert unsent == 0


def stuck_volumes(cinder, volume_ids):
    return {v: cinder.volume(v)['status'] for v in volume_ids
            if cinder.volume(v)['status'] not in ('available', 'in-use')}


def owners(worker):
    """pid of each journalled operation's owner (the process that ran it)."""
    return collections.Counter(int(r['owner'].split(':')[0]) for r in journal_rows(worker))


def spread(count, workers):
    """``count`` instance uuids, as many for each worker process (router.slot_of)."""
    chosen, per_slot = [], collections.Counter()
    while len(chosen) < count:
        instance = str(uuid.uuid4())
        slot = router.slot_of(instance, workers)
        if per_slot[slot] < count // workers:
            per_slot[slot] += 1
            chosen.append(instance)
    return chosen


def test_each_instance_runs_its_casts_in_cast_order(make_worker, controller, cinder):
    """Per instance: attach, detach, attach, detach... of one volume, twelve casts in a
    burst for each of four instances. Each cast's Cinder requests reach the stand-in
    in cast order, and the journal began them in that order, while the casts of all
    instances ran in parallel over two processes. (One process with 16 threads can
    fail this: threads waiting for an instance's lock do not get it in arrival
    order.)"""
    worker = make_worker(worker__workers=2, executor_thread_pool_size=16).start()
    ctl = controller(worker)
    # the main process is the one consumer; its prefetch covers both children's threads
    assert host_queue_consumers(worker) == [128]
    cinder.fail('PUT', r'/attachments/', status=None, times=None, delay=0.05)
    instances = {instance: cinder.add_volume() for instance in spread(4, 2)}
    order = collections.defaultdict(list)  # instance -> [global request id]
    ids = []
    for step in range(12):
        for instance, volume_id in instances.items():
            ctxt = caller()
            ids.append(ctxt.request_id)
            assert ctxt.global_id == ctxt.request_id  # what Cinder is sent
            order[instance].append(ctxt.request_id)
            if step % 2 == 0:
                ctl.api.attach_volume(ctxt, worker.host, {'uuid': instance}, volume_id,
                                      '/dev/vdb')
            else:
                ctl.api.detach_volume(ctxt, worker.host, {'uuid': instance}, volume_id)
    wait_until(lambda: len(terminal_events(ctl)) >= len(ids), 90, 'every outcome', worker)
    seen = terminal_events(ctl)
    assert all(len(seen[r]) == 1 for r in ids), seen
    assert all(set(seen[r].values()) <= {'instance.volume_attach.end',
                                         'instance.volume_detach.end'} for r in ids), seen
    # the effect order, as Cinder saw it: the first request of each cast, per volume
    for instance, volume_id in instances.items():
        arrived = []
        for call in cinder.requests:
            rid = call.headers.get('X-OpenStack-Request-ID')
            if volume_id in call.path or volume_id in json.dumps(call.body or {}):
                if rid in order[instance] and rid not in arrived:
                    arrived.append(rid)
        assert arrived == order[instance], (instance, arrived, order[instance])
        assert cinder.volume(volume_id)['status'] == 'available'
    # and as the journal began them
    begun = collections.defaultdict(list)
    for row in journal_rows(worker):
        begun[row['fields']['instance_uuid']].append(row['request_id'])
    for instance in instances:
        assert begun[instance] == order[instance], instance
    served = owners(worker)
    print('workers = 2, %d casts over %d instances: each instance in cast order; '
          'operations per process %s' % (len(ids), len(instances), dict(served)))
    assert worker.proc.pid not in served and len(served) == 2


def cast_attaches(ctl, worker, cinder, count):
    """``count`` attaches, each for its own volume and instance (spread over both
    processes); [(request_id, volume_id)]."""
    casts = []
    for instance in spread(count, 2):
        ctxt, volume_id = caller(), cinder.add_volume()
        casts.append((ctxt.request_id, volume_id))
        ctl.api.attach_volume(ctxt, worker.host, {'uuid': instance}, volume_id, '/dev/vdb')
    return casts


def answered(ctl, casts):
    seen = terminal_events(ctl)
    return all(seen.get(rid) for rid, _ in casts)


def updates(cinder):
    """attachment_update requests the stand-in got: progress, without draining the
    watcher (``events()`` returns only once notifications stop coming)."""
    return sum(c.method == 'PUT' for c in cinder.requests)


def finished(worker):
    return sum(r['state'] != 'running' for r in journal_rows(worker))


def assert_one_outcome_each(ctl, cinder, casts):
    """Exactly one terminal notification per cast, saying what Cinder says."""
    seen = terminal_events(ctl)
    counts = collections.Counter(len(seen[rid]) for rid, _ in casts)
    assert counts == {1: len(casts)}, counts
    assert stuck_volumes(cinder, [v for _, v in casts]) == {}
    for rid, volume_id in casts:
        attached = cinder.volume(volume_id)['status'] == 'in-use'
        assert set(seen[rid].values()) == {
            'instance.volume_attach.%s' % ('end' if attached else 'error')}, rid
    return seen


def test_sigterm_drains_every_worker_process(make_worker, controller, cinder):
    worker = make_worker(worker__workers=2, executor_thread_pool_size=8).start()
    ctl = controller(worker)
    pids = child_pids_started(worker)
    assert len(pids) == 2 and all(alive(p) for p in pids)
    cinder.fail('PUT', r'/attachments/', status=None, times=None, delay=0.4)  # slow
    casts = cast_attaches(ctl, worker, cinder, 40)
    wait_until(lambda: len(owners(worker)) == 2, 30, 'both processes to start casts',
               worker)
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(60) == 0
    assert not [p for p in pids if alive(p)]  # no process left
    seen = ctl.outcomes([], timeout=2)
    started = [r for r, events in seen.items() if 'instance.volume_attach.start' in events]
    terminal = terminal_events(ctl)
    print('workers = 2, SIGTERM during 40 slow casts: %d started before the exit, by '
          'processes %s' % (len(started), dict(owners(worker))))
    assert started and all(len(terminal[r]) == 1 for r in started), terminal
    assert len(owners(worker)) == 2  # both children had casts in flight and drained them
    assert 'handed back' in worker.log.read_text()
    assert_journal_clean(worker)
    assert stuck_volumes(cinder, [v for _, v in casts]) == {}
    # what was not started waited in RabbitMQ, unacknowledged: the next start runs it
    worker.start()
    wait_until(lambda: answered(ctl, casts), 60,
               'every outcome after the restart', worker)
    assert_one_outcome_each(ctl, cinder, casts)
    assert {cinder.volume(v)['status'] for _, v in casts} == {'in-use'}


def test_start_up_recovery_runs_once_in_the_main_process(make_worker, controller,
                                                         cinder):
    """Operations a crash left running are recovered by the main process before any
    child starts, each with exactly one outcome; the children recover nothing."""
    worker = make_worker(executor_thread_pool_size=8).start()  # declares the host queue
    ctl = controller(worker)
    worker.stop()
    cinder.fail('POST', r'/attachments', status=None, times=None, delay=0.3)
    casts = cast_attaches(ctl, worker, cinder, 6)
    crashed = subprocess.Popen(  # one process, killed at its first attachment_update
        [str(BIN / 'attachworker-compute'), '--config-file', str(worker.config)],
        env=dict(os.environ, ATTACHWORKER_TEST_CRASH_AT='attachment_update:done'),
        stdout=open(worker.out, 'a'), stderr=subprocess.STDOUT)
    assert crashed.wait(60) == -9, worker.logs()[-3000:]
    unfinished = [r['request_id'] for r in journal_rows(worker) if r['state'] == 'running']
    assert unfinished
    with cinder._lock:
        cinder._faults.clear()
    worker.config.write_text(worker.config.read_text().replace(
        '[worker]\n', '[worker]\nworkers = 2\n'))
    offset = worker.log.stat().st_size
    worker.start()
    wait_until(lambda: answered(ctl, casts), 60,
               'every outcome', worker)
    seen = assert_one_outcome_each(ctl, cinder, casts)
    recovered = [r for r in unfinished
                 if (ctl.fault(r) or {}).get('step') == 'recovery']
    assert sorted(recovered) == sorted(unfinished)
    lines = worker.log.read_text()[offset:].splitlines()
    parent = str(worker.proc.pid)
    recovering = [i for i, line in enumerate(lines) if 'Recovering volume_attach' in line]
    first_child = next(i for i, line in enumerate(lines) if 'Started worker' in line)
    print('workers = 2 after a crash: %d operations left running, each recovered once '
          '(%d outcomes in all) by the main process before its children started'
          % (len(unfinished), sum(len(v) for v in seen.values())))
    assert len(recovering) == len(unfinished)
    assert all(lines[i].split()[2] == parent for i in recovering)
    assert max(recovering) < first_child
    children_lines = [line for line in lines
                      if line.split()[2:3] and line.split()[2] != parent]
    assert children_lines  # the children did log (they served the rest)
    assert not [line for line in children_lines if 'Recover' in line]


def test_a_child_killed_during_a_backlog_is_replaced(make_worker, controller, cinder):
    worker = make_worker(worker__workers=2, executor_thread_pool_size=8).start()
    ctl = controller(worker)
    worker.stop()  # the casts wait in RabbitMQ: a backlog
    cinder.fail('PUT', r'/attachments/', status=None, times=None, delay=0.2)
    casts = cast_attaches(ctl, worker, cinder, 200)
    offset = worker.log.stat().st_size
    worker.start(timeout=60)
    victim = child_pids_started(worker)[-2]  # the first of this start's two
    wait_until(lambda: updates(cinder) >= 20, 60, 'some attaches', worker)
    os.kill(victim, signal.SIGKILL)
    killed_at = finished(worker)
    wait_until(lambda: answered(ctl, casts), 180,
               'every outcome', worker)
    time.sleep(1)  # a late duplicate would show up now
    assert killed_at < len(casts), 'the backlog was done before the kill'
    seen = assert_one_outcome_each(ctl, cinder, casts)
    log = worker.log.read_text()[offset:]
    assert re.search(r'worker \d/2 \(pid %d\) ended \(signal 9\)' % victim, log), log[-3000:]
    assert len(child_pids_started(worker)) == 5  # two, two, and the replacement
    assert worker.proc.poll() is None and not alive(victim)
    errors = sum('instance.volume_attach.error' in v.values() for v in seen.values())
    print('workers = 2, one child killed -9 at %d of %d outcomes: one outcome each, '
          '%d attached, %d errors (recovered)' % (killed_at, len(casts),
                                                  len(casts) - errors, errors))
    worker.stop()
    assert_journal_clean(worker)


def test_children_exit_when_the_main_process_is_killed(make_worker, controller, cinder):
    worker = make_worker(worker__workers=2, executor_thread_pool_size=8).start()
    ctl = controller(worker)
    worker.stop()
    cinder.fail('PUT', r'/attachments/', status=None, times=None, delay=0.2)
    casts = cast_attaches(ctl, worker, cinder, 100)
    worker.start(timeout=60)
    pids = child_pids_started(worker)[-2:]
    wait_until(lambda: updates(cinder) >= 10, 60, 'some attaches', worker)
    worker.proc.send_signal(signal.SIGKILL)
    worker.proc.wait()
    wait_until(lambda: not any(alive(p) for p in pids), 30, 'the children to exit', worker)
    assert host_queue_consumers(worker) == []  # nothing of it consumes any more
    done = finished(worker)
    assert done < len(casts), 'the backlog was done before the kill'

    worker.start(timeout=60)
    wait_until(lambda: answered(ctl, casts), 120,
               'every outcome after the restart', worker)
    time.sleep(1)
    print('workers = 2, main process killed -9: its children exited; %d outcomes then, '
          'the restart answered the other %d' % (done, len(casts) - done))
    assert_one_outcome_each(ctl, cinder, casts)
    worker.stop()
    assert_journal_clean(worker)


def test_sigterm_to_one_child_drains_it_and_a_new_one_takes_over(make_worker, controller,
                                                                  cinder):
    worker = make_worker(worker__workers=2, executor_thread_pool_size=8).start()
    ctl = controller(worker)
    worker.stop()
    cinder.fail('PUT', r'/attachments/', status=None, times=None, delay=0.2)
    casts = cast_attaches(ctl, worker, cinder, 120)
    offset = worker.log.stat().st_size
    worker.start(timeout=60)
    victim = child_pids_started(worker)[-1]
    wait_until(lambda: updates(cinder) >= 20, 60, 'some attaches', worker)
    os.kill(victim, signal.SIGTERM)
    wait_until(lambda: answered(ctl, casts), 120,
               'every outcome', worker)
    seen = assert_one_outcome_each(ctl, cinder, casts)
    # it finished what it ran (no .error), and what it had not started went to the
    # new process
    assert {e for v in seen.values() for e in v.values()} == {'instance.volume_attach.end'}
    log = worker.log.read_text()[offset:]
    assert re.search(r'worker \d/2 \(pid %d\) ended \(exit status 0\)' % victim, log)
    assert len(child_pids_started(worker)) == 5 and not alive(victim)
    worker.stop()
    assert_journal_clean(worker)


def scrape(port):
    """{(sample, labels): value} of the worker's /metrics, parsed as Prometheus does."""
    text = urllib.request.urlopen('http://127.0.0.1:%d/metrics' % port, timeout=10).read()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode()) for s in family.samples}


ATTACHED = ('attachworker_operations_total',
            (('action', 'volume_attach'), ('outcome', 'success')))
UPDATES = ('attachworker_cinder_requests_total',
           (('call', 'attachment_update'), ('status', '200')))


def test_metrics_are_served_by_the_main_process_with_the_childrens_counts(
        make_worker, controller, cinder):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    worker = make_worker(worker__workers=2, metrics__port=port).start()
    ctl = controller(worker)
    casts = cast_attaches(ctl, worker, cinder, 6)
    wait_until(lambda: answered(ctl, casts), 60, 'every outcome', worker)
    # the children ran them; their counts reach the main process's endpoint
    wait_until(lambda: scrape(port).get(ATTACHED) == 6, 15, '6 attaches counted', worker)
    samples = scrape(port)
    assert samples[('attachworker_journal_orphans', ())] == 0
    assert samples.get(UPDATES) == 6
    assert samples[('attachworker_operations_in_flight', (('action', 'volume_attach'),))] \
        == 0
    assert samples[('attachworker_step_duration_seconds_count',
                    (('action', 'volume_attach'), ('step', 'driver_attach')))] == 6

    # a child that ends takes its counts with it only into the sum, never out of it
    victim = child_pids_started(worker)[-1]
    os.kill(victim, signal.SIGTERM)
    wait_until(lambda: len(child_pids_started(worker)) == 3, 60, 'its successor', worker)
    assert scrape(port).get(ATTACHED) == 6
    more = cast_attaches(ctl, worker, cinder, 4)
    wait_until(lambda: answered(ctl, more), 60, 'the later outcomes', worker)
    wait_until(lambda: scrape(port).get(ATTACHED) == 10, 15, '10 attaches counted',
               worker)
    print('workers = 2, metrics of the main process: %d attaches counted, %d '
          'attachment updates, across a child replaced' % (scrape(port)[ATTACHED],
                                                          scrape(port)[UPDATES]))
    assert worker.proc.poll() is None
    assert 'Metrics' not in ''.join(line for line in worker.log.read_text().splitlines()
                                    if 'ERROR' in line)


def test_graceful_timeout_undoes_what_every_child_still_runs(make_worker, controller,
                                                             cinder):
    """As with one process: at ``graceful_shutdown_timeout`` what still runs is undone
    and ends ``.error`` (step ``shutdown``), in every child; then all exit."""
    worker = make_worker(worker__workers=2, worker__graceful_shutdown_timeout=1,
                         executor_thread_pool_size=8).start()
    ctl = controller(worker)
    pids = child_pids_started(worker)
    cinder.fail('PUT', r'/attachments/', status=None, times=None, delay=3)
    casts = cast_attaches(ctl, worker, cinder, 6)
    wait_until(lambda: updates(cinder) >= 6, 30, 'every attachment_update', worker)
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(60) == 0
    assert not [p for p in pids if alive(p)]
    wait_until(lambda: answered(ctl, casts), 10, 'every outcome', worker)
    seen = terminal_events(ctl)
    assert all(list(seen[r].values()) == ['instance.volume_attach.error'] for r, _ in casts)
    assert {ctl.fault(r)['step'] for r, _ in casts} == {'shutdown'}
    assert {cinder.volume(v)['status'] for _, v in casts} == {'available'}
    assert len(owners(worker)) == 2
    assert_journal_clean(worker)

"""SIGTERM during a burst, against the real Cinder: exit 0 in time, a clean journal."""
import signal
import sqlite3
import time
import uuid

import pytest

from tests.integration.conftest import caller_context

STUCK = {'reserved', 'attaching', 'error_attaching'}


@pytest.mark.parametrize('timeout', [60, 1], ids=['drain', 'timeout-undoes'])
def test_sigterm_during_a_burst(timeout, make_worker, controller, volumes, sessions,
                                admin_cinder):
    worker = make_worker(executor_thread_pool_size=8, worker__graceful_shutdown_timeout=timeout)
    ctl = controller(worker)
    ids = volumes.make(40)
    requests = []
    for vid in ids:
        ctxt = caller_context(sessions['demo'])
        requests.append(ctxt.request_id)
        ctl.api.attach_volume(ctxt, worker.host, {'uuid': str(uuid.uuid4()),
                                                  'project_id': ctxt.project_id}, vid)
    deadline = time.monotonic() + 30
    while not any(n['event_type'].endswith('.start') for n in ctl.watcher.events()):
        assert time.monotonic() < deadline, worker.logs()[-2000:]
        time.sleep(0.02)
    t0 = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout + 40) == 0
    exited = time.monotonic() - t0
    seen = ctl.outcomes([], timeout=3)
    started = [r for r in requests if 'instance.volume_attach.start' in seen.get(r, [])]
    terminal = {r: [e for e in seen[r] if e.endswith(('.end', '.error'))] for r in started}
    with sqlite3.connect(worker.state / 'journal.sqlite') as db:
        states = dict(db.execute('SELECT state, count(*) FROM operations GROUP BY state'))
        unsent = db.execute('SELECT count(*) FROM outbox WHERE sent_at IS NULL').fetchone()[0]
    statuses = [admin_cinder.volumes.get(v).status for v in ids]
    print('SIGTERM (graceful timeout %d s): exit 0 after %.1f s; %d of %d casts started, '
          'outcomes %s; journal %s, %d unsent; volumes %s'
          % (timeout, exited, len(started), len(requests),
             {e: sum(t == [e] for t in terminal.values()) for e in
              ('instance.volume_attach.end', 'instance.volume_attach.error')},
             states, unsent, {s: statuses.count(s) for s in set(statuses)}))
    assert started
    assert all(len(t) == 1 for t in terminal.values()), terminal
    assert 'running' not in states and 'undo_failed' not in states and unsent == 0
    assert not STUCK & set(statuses)
    # what was not started is still queued in RabbitMQ for the next start
    worker.start()
    rest = [r for r in requests if r not in started]
    seen = ctl.outcomes(rest, timeout=120)
    assert all(seen.get(r, [])[-1:] == ['instance.volume_attach.end'] for r in rest), seen

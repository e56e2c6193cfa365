"""attachworker-compute as a process, over the real RabbitMQ, against a Cinder stand-in."""
import signal
import sqlite3
import time
import uuid

from attachworker import context as aw_context
from tests import harness
from tests.functional.conftest import CHAP_SECRET

TOKEN = 'gAAAAABfunctional-caller-token-%s' % uuid.uuid4().hex
PROJECT = uuid.uuid4().hex


def caller():
    return aw_context.RequestContext(auth_token=TOKEN, user_id='u1', project_id=PROJECT,
                                     roles=['member'])


def test_cast_is_attached_with_start_and_end_notifications(make_worker, controller, cinder):
    worker = make_worker().start()
    ctl = controller(worker)
    api, watcher = ctl.api, ctl.watcher
    volume_id = cinder.add_volume()
    instance = {'uuid': str(uuid.uuid4()), 'project_id': PROJECT}
    ctxt = caller()
    api.attach_volume(ctxt, worker.host, instance, volume_id, '/dev/vdb')

    note = watcher.wait(ctxt.request_id, 30)
    assert note is not None, worker.logs()[-3000:]
    events = [n['event_type'] for n in watcher.events(ctxt.request_id)]
    assert events == ['instance.volume_attach.start', 'instance.volume_attach.end']
    assert note['publisher_id'] == 'attachworker-compute:%s' % worker.host
    data = note['payload']['attachworker_object.data']
    assert data['volume_id'] == volume_id and data['flow'] == 'attachments'

    volume = cinder.volume(volume_id)
    assert volume['status'] == 'in-use'
    (attachment,) = volume['attachments']
    assert attachment['instance_uuid'] == instance['uuid']
    assert attachment['connector']['initiator'] == 'iqn.2004-10.org.ft:host'
    assert attachment['connector']['host'] == worker.host
    # the caller's token and the request id reached Cinder
    calls = [c for c in cinder.requests if c.path.startswith(('/volumes', '/attachments'))]
    assert {c.headers.get('X-Auth-Token') for c in calls} == {TOKEN}
    assert {c.headers.get('X-OpenStack-Request-ID') for c in calls} == {ctxt.global_id}


def test_no_secret_in_any_log_line_or_notification_with_debug(make_worker, controller,
                                                              cinder):
    worker = make_worker(debug='true', default_log_levels='keystoneauth=DEBUG,'
                         'cinderclient=DEBUG,oslo_messaging=DEBUG,attachworker=DEBUG')
    worker.start()
    ctl = controller(worker)
    api, watcher = ctl.api, ctl.watcher
    ok_volume, bad_volume = cinder.add_volume(), cinder.add_volume()
    cinder.fail('POST', r'/attachments/.*/action', 500, times=1)  # one complete fails
    ids = []
    for volume_id in (ok_volume, bad_volume):
        ctxt = caller()
        ids.append(ctxt.request_id)
        api.attach_volume(ctxt, worker.host, {'uuid': str(uuid.uuid4())}, volume_id,
                          '/dev/vdb')
    seen = ctl.outcomes(ids)
    # one attach succeeded, one failed after attachment_update and was undone
    assert sorted(seen[r][-1] for r in ids) == ['instance.volume_attach.end',
                                                'instance.volume_attach.error'], seen
    worker.stop()

    # the secrets really crossed the worker: Cinder saw the token and sent the CHAP data
    assert any(c.headers.get('X-Auth-Token') == TOKEN for c in cinder.requests)
    # attachment_update answered with connection_info carrying the CHAP password
    assert any(c.method == 'PUT' and c.path.startswith('/attachments/')
               for c in cinder.requests)
    logs = worker.logs()
    assert 'DEBUG' in logs  # debug logging was really on
    wire = '\n'.join(raw if isinstance(raw, str) else raw.decode() for raw in watcher.raw)
    assert wire
    for secret in (TOKEN, CHAP_SECRET):
        assert secret not in logs
        assert secret not in wire
    state = harness.files_bytes(worker.state / 'fake-virt')
    assert state  # the successful attach is recorded
    assert CHAP_SECRET.encode() not in state


def test_malformed_casts_get_errors_and_the_worker_goes_on(make_worker, controller, cinder):
    worker = make_worker().start()
    ctl = controller(worker)
    api, watcher = ctl.api, ctl.watcher
    bad = [
        dict(instance=None, volume_id=str(uuid.uuid4())),
        dict(instance='not-a-dict', volume_id=str(uuid.uuid4())),
        dict(instance={'uuid': 'nope'}, volume_id=str(uuid.uuid4())),
        dict(instance={'uuid': str(uuid.uuid4())}, volume_id='x' * (1 << 20)),
        dict(instance={'uuid': str(uuid.uuid4())}, volume_id=str(uuid.uuid4()),
             mode='rwx'),
        dict(instance={'uuid': str(uuid.uuid4())}, volume_id=str(uuid.uuid4()),
             unknown_argument=1),
        dict(instance={'uuid': str(uuid.uuid4())}, volume_id=str(uuid.uuid4())),  # 404
    ]
    ids = []
    for args in bad:
        ctxt = caller()
        ids.append(ctxt.request_id)
        api.client.prepare(server=worker.host).cast(ctxt, 'attach_volume', **args)
    good = caller()
    api.attach_volume(good, worker.host, {'uuid': str(uuid.uuid4())}, cinder.add_volume(),
                      '/dev/vdb')
    seen = ctl.outcomes(ids + [good.request_id])
    for rid in ids:
        assert seen.get(rid, [])[-1:] == ['instance.volume_attach.error'], (rid, seen)
    assert seen[good.request_id][-1] == 'instance.volume_attach.end'
    faults = [n['payload']['attachworker_object.data']['fault'] for n in watcher.events()
              if n['event_type'].endswith('.error')]
    assert sorted(f['step'] for f in faults) == ['get_volume'] + ['validate'] * 6
    assert worker.proc.poll() is None


def test_sigterm_during_a_burst_finishes_every_started_attach(make_worker, controller,
                                                               cinder):
    worker = make_worker().start()
    ctl = controller(worker)
    api, watcher = ctl.api, ctl.watcher
    cinder.fail('PUT', r'/attachments/', status=None, times=None, delay=0.4)  # slow Cinder
    ids = []
    for _ in range(40):
        ctxt = caller()
        ids.append(ctxt.request_id)
        api.attach_volume(ctxt, worker.host, {'uuid': str(uuid.uuid4())},
                          cinder.add_volume(), '/dev/vdb')
    deadline = time.monotonic() + 30
    while not any(n['event_type'].endswith('.start') for n in watcher.events()):
        assert time.monotonic() < deadline, worker.logs()[-2000:]
        time.sleep(0.05)
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(60) == 0
    seen = ctl.outcomes([], timeout=2)
    started = [r for r, events in seen.items() if 'instance.volume_attach.start' in events]
    unfinished = [r for r in started
                  if sum(e.endswith(('.end', '.error')) for e in seen[r]) != 1]
    print('SIGTERM burst: %d casts, %d started before exit, %d unfinished'
          % (len(ids), len(started), len(unfinished)))
    assert started and not unfinished
    for volume_id in [c.path.split('/')[2] for c in cinder.requests
                      if c.path.startswith('/volumes/')]:
        assert cinder.volume(volume_id)['status'] in ('available', 'in-use')
    assert_journal_clean(worker)
    # oslo.messaging 18.3 acknowledges casts on arrival, so every cast received was
    # run before the exit; any not yet received is still in RabbitMQ for the next start
    rest = [r for r in ids if r not in started]
    worker.start()
    seen = ctl.outcomes(rest, timeout=60)
    assert all(seen.get(r, [])[-1:] == ['instance.volume_attach.end'] for r in rest), seen


def assert_journal_clean(worker):
    """Nothing left running, nothing left unpublished."""
    with sqlite3.connect(worker.state / 'journal.sqlite') as db:
        states = dict(db.execute('SELECT state, count(*) FROM operations GROUP BY state'))
        unsent = db.execute('SELECT count(*) FROM outbox WHERE sent_at IS NULL').fetchone()[0]
    print('journal after exit: %s, %d unsent notification(s)' % (states, unsent))
    assert 'running' not in states and 'undo_failed' not in states
    assert unsent == 0


def test_graceful_timeout_undoes_what_still_runs(make_worker, controller, cinder):
    worker = make_worker(worker__graceful_shutdown_timeout=1)
    worker.start()
    ctl = controller(worker)
    api, watcher = ctl.api, ctl.watcher
    # attachment_update takes 3 s: the timeout runs out while casts are inside it
    cinder.fail('PUT', r'/attachments/', status=None, times=None, delay=3)
    ids = []
    for _ in range(6):
        ctxt = caller()
        ids.append(ctxt.request_id)
        api.attach_volume(ctxt, worker.host, {'uuid': str(uuid.uuid4())},
                          cinder.add_volume(), '/dev/vdb')
    deadline = time.monotonic() + 30
    while sum(c.method == 'PUT' for c in cinder.requests) < 6:
        assert time.monotonic() < deadline, worker.logs()[-2000:]
        time.sleep(0.05)
    t0 = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(60) == 0
    print('exit %.1f s after SIGTERM (timeout 1 s, Cinder calls of 3 s)'
          % (time.monotonic() - t0))
    seen = ctl.outcomes(ids, timeout=5)
    for rid in ids:
        terminal = [e for e in seen[rid] if e.endswith(('.end', '.error'))]
        assert terminal == ['instance.volume_attach.error'], seen[rid]
    faults = {n['payload']['attachworker_object.data']['fault']['step']
              for n in watcher.events() if n['event_type'].endswith('.error')}
    assert faults == {'shutdown'}
    for volume_id in {c.path.split('/')[2] for c in cinder.requests
                      if c.path.startswith('/volumes/')}:
        assert cinder.volume(volume_id)['status'] == 'available'
    assert_journal_clean(worker)

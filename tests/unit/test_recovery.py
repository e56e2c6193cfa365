"""Recovery of operations a dead worker left, against requests-mock'ed Cinder.

Each case runs the real pipeline and "kills" it right after the journal recorded a
step boundary (the journal raises a BaseException there, which nothing in the
worker catches, as a kill -9 would leave it). Recovery, as a new process would,
then replays the journalled stack: it must make exactly the undo calls the
pipeline would have made, as the [cinder] user, and send the cast's one terminal
notification.
"""
import oslo_messaging as messaging
import pytest
import requests_mock

from attachworker import connector as aw_connector
from attachworker import context as aw_context
from attachworker import virt
from attachworker.cinder import CinderAPI
from attachworker.manager import ComputeManager
from attachworker.notifications import Notifier
from attachworker.worker.journal import Journal
from attachworker.worker.outbox import Outbox
from attachworker.worker.recovery import Recovery
from tests.unit.conftest import CINDER
from tests.unit.conftest import CinderMock
from tests.unit.test_cinder_auth import KEYSTONE
from tests.unit.test_cinder_auth import SERVICE_PROJECT
from tests.unit.test_cinder_auth import keystone_token
from tests.unit.test_cinder_auth import use_password_auth

INSTANCE = {'uuid': '8f0e3c4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b', 'project_id': SERVICE_PROJECT}
ATT_STEPS = ['cinder_client', 'get_volume', 'check_attach', 'connector', 'attachment_create',
             'attachment_update', 'driver_attach', 'attachment_complete']
LEGACY_STEPS = ['cinder_client', 'get_volume', 'check_attach', 'connector', 'reserve',
                'initialize_connection', 'driver_attach', 'attach']
DEL = ['GET /attachments/ATT', 'DELETE /attachments/ATT']
UNRESERVE = ['POST /volumes/VOL/action:os-unreserve']
TERMINATE = ['POST /volumes/VOL/action:os-terminate_connection']


class Killed(BaseException):
    """What kill -9 leaves: nothing after this point runs."""


class CrashingJournal(Journal):
    """ATTACHWORKER_TEST_CRASH_AT's hook, dying by an exception instead of SIGKILL: the
    record the crash follows is on disk first, as it is for the real one."""

    def __init__(self, state_path, crash_at):
        super().__init__(state_path, owner='424242:1')
        self.crash_at = crash_at
        self._crash_at = ':'.join(crash_at)

    def _die(self):
        if self._crash_at.endswith(':lost'):  # a power cut: the open batch is lost too
            self._db.execute('ROLLBACK')
        raise Killed(self._crash_at)


@pytest.fixture
def cloud(conf, notifications):
    with requests_mock.Mocker() as m:
        use_password_auth(conf, 'cinder')
        keystone_token(m, 'cinder-admin-token', SERVICE_PROJECT)
        cinder = CinderMock(m, project=SERVICE_PROJECT)
        yield cinder


def notifier(conf):
    return Notifier(messaging.get_notification_transport(conf, url='fake://'), conf.host,
                    driver='test')


def caller():
    return aw_context.RequestContext(auth_token='caller-token', user_id='u',
                                     project_id=SERVICE_PROJECT, request_id='req-crashed')


def crash(conf, crash_at, cast='attach', **kwargs):
    """Run one cast in a 'process' that dies at ``crash_at``; the journal stays."""
    dead = CrashingJournal(conf.state_path, crash_at)
    manager = ComputeManager(conf, CinderAPI(conf), virt.load_driver(conf),
                             Outbox(dead, notifier(conf)),
                             lambda: aw_connector.get_connector_properties(conf))
    try:
        if cast == 'attach':
            manager.attach_volume(caller(), INSTANCE, kwargs.pop('volume_id'), '/dev/vdb',
                                  **kwargs)
        else:
            manager.detach_volume(caller(), INSTANCE, kwargs.pop('volume_id'), **kwargs)
    except Killed:
        pass
    else:
        raise AssertionError('the cast never reached %s' % ':'.join(crash_at))
    finally:
        dead.close()  # the dead process's owner lock is gone with it


def recover(conf):
    journal = Journal(conf.state_path)
    try:
        return Recovery(conf, CinderAPI(conf), virt.load_driver(conf),
                        Outbox(journal, notifier(conf))).run()
    finally:
        journal.close()


def calls_after(cinder, mark):
    return [c for c in cinder.calls()[mark:] if c != 'GET /volumes/VOL']


CASES = {}
for _step in ATT_STEPS[:4]:
    for _state in ('started', 'done'):
        CASES[('attachments', _step, _state)] = ([], 'error')
        CASES[('legacy', _step, _state)] = ([], 'error')
CASES.update({
    # the create's answer never came: ours is looked for by instance (none listed here)
    ('attachments', 'attachment_create', 'started'): (['GET /attachments?volume_id=VOL'],
                                                      'error'),
    ('attachments', 'attachment_create', 'done'): (DEL, 'error'),
    ('attachments', 'attachment_update', 'started'): (DEL, 'error'),
    ('attachments', 'attachment_update', 'done'): (DEL, 'error'),
    ('attachments', 'driver_attach', 'started'): (DEL, 'error'),
    ('attachments', 'driver_attach', 'done'): (DEL, 'error'),
    # the complete's own undo deletes it; the create's then finds it gone
    ('attachments', 'attachment_complete', 'started'): (DEL + ['GET /attachments/ATT'],
                                                        'error'),
    ('attachments', 'attachment_complete', 'done'): ([], 'end'),
    ('legacy', 'reserve', 'started'): (UNRESERVE, 'error'),
    ('legacy', 'reserve', 'done'): (UNRESERVE, 'error'),
    ('legacy', 'initialize_connection', 'started'): (TERMINATE + UNRESERVE, 'error'),
    ('legacy', 'initialize_connection', 'done'): (TERMINATE + UNRESERVE, 'error'),
    ('legacy', 'driver_attach', 'started'): (TERMINATE + UNRESERVE, 'error'),
    ('legacy', 'driver_attach', 'done'): (TERMINATE + UNRESERVE, 'error'),
    ('legacy', 'attach', 'started'): (TERMINATE + UNRESERVE, 'error'),
    ('legacy', 'attach', 'done'): ([], 'end'),
})


@pytest.mark.parametrize('case', sorted(CASES), ids=lambda c: '%s-%s-%s' % c)
def test_recovery_replays_the_stack_the_dead_worker_journalled(case, conf, cloud,
                                                               notifications):
    flow, step, state = case
    calls, terminal = CASES[case]
    conf.set_override('attach_flow', flow, group='cinder')
    crash(conf, (step, state), volume_id=cloud.volume_id)
    mark, history = len(cloud.calls()), len(cloud.m.request_history)
    notified = len(notifications())
    assert recover(conf) == {'completed' if terminal == 'end' else 'undone': 1}
    assert calls_after(cloud, mark) == calls
    published = notifications()[notified:]
    assert [e for e, _, _, _ in published] == ['instance.volume_attach.%s' % terminal]
    data = published[0][2]
    assert data['request_id'] == 'req-crashed' and data['volume_id'] == cloud.volume_id
    if terminal == 'error':
        assert data['fault']['step'] == 'recovery'
        assert data['fault']['exception'] == 'Interrupted'
        assert '%s (%s)' % (step, state) in data['fault']['message']
    # recovery used the [cinder] user's token, never the caller's
    tokens = {r.headers.get('X-Auth-Token') for r in cloud.m.request_history[history:]
              if r.url.startswith(CINDER)}
    assert tokens <= {'cinder-admin-token'}
    # the fake driver no longer holds an undone attach
    attached = virt.load_driver(conf).get_attachments(INSTANCE['uuid'])
    assert bool(attached) == (terminal == 'end')
    assert recover(conf) == {}  # nothing left


def test_legacy_undo_lets_the_host_go_before_cinder_is_told(conf, cloud, notifications):
    conf.set_override('attach_flow', 'legacy', group='cinder')
    order = []
    driver = virt.load_driver(conf)
    real_detach = driver.detach_volume
    driver.detach_volume = lambda *a: (order.append('driver_detach'), real_detach(*a))
    cloud.m.post('%s/volumes/%s/action' % (cloud.base, cloud.volume_id),
                 json=lambda r, c: (order.append(next(iter(r.json()))),
                                    cloud._action(r, c))[1])
    crash(conf, ('attach', 'done'), volume_id=cloud.volume_id)  # Cinder says attached...
    journal = Journal(conf.state_path)
    op = journal.list(limit=1)[0]
    # ...but pretend the commit never reached the disk: the whole stack is armed
    journal._write("UPDATE undos SET state='armed' WHERE op_id=?", op['op_id'])
    journal._write('UPDATE operations SET committed=0 WHERE op_id=?', op['op_id'])
    journal.close()
    order.clear()
    Recovery(conf, CinderAPI(conf), driver, Outbox(Journal(conf.state_path),
                                                    notifier(conf))).run()
    assert order == ['driver_detach', 'os-detach', 'os-terminate_connection', 'os-unreserve']


def test_unknown_reservation_is_found_by_instance_and_deleted(conf, cloud, notifications):
    cloud.listed = [{'id': cloud.attachment_id, 'instance': INSTANCE['uuid'],
                     'status': 'reserved', 'volume_id': cloud.volume_id},
                    {'id': 'someone-else', 'instance': 'other', 'status': 'attached',
                     'volume_id': cloud.volume_id},
                    {'id': 'live-one', 'instance': INSTANCE['uuid'], 'status': 'attached',
                     'volume_id': cloud.volume_id}]
    crash(conf, ('attachment_create', 'started'), volume_id=cloud.volume_id)
    mark = len(cloud.calls())
    recover(conf)
    # only the reserved one: never another instance's, never an attached one
    assert [c for c in cloud.calls()[mark:] if not c.startswith('GET')] == [
        'DELETE /attachments/ATT']


def test_finish_mode_completes_an_attach_the_driver_finished(conf, cloud, notifications):
    conf.set_override('recovery_action', 'finish', group='worker')
    crash(conf, ('attachment_complete', 'started'), volume_id=cloud.volume_id)
    mark = len(cloud.calls())
    assert recover(conf) == {'completed': 1}
    assert calls_after(cloud, mark) == ['POST /attachments/ATT/action:os-complete']
    assert notifications()[-1][0] == 'instance.volume_attach.end'
    assert virt.load_driver(conf).get_attachments(INSTANCE['uuid'])


def test_failed_undo_is_retried_without_a_second_notification(conf, cloud, notifications):
    crash(conf, ('attachment_update', 'done'), volume_id=cloud.volume_id)
    cloud.fail('DELETE', '/attachments/' + cloud.attachment_id, 500)
    before = len(notifications())
    assert recover(conf) == {'undo_failed': 1}
    assert len(notifications()) == before + 1  # the cast's one .error: undo failed
    assert 'only partly undone' in notifications()[-1][2]['fault']['message']
    cloud.m.delete('%s/attachments/%s' % (cloud.base, cloud.attachment_id),
                   json=cloud._deleted)
    assert recover(conf) == {'undone': 1}
    # no second outcome; the audit trail learns the undo is finished
    assert [e for e, _, _, _ in notifications()[before:]] == [
        'instance.volume_attach.error', 'instance.volume_attach.cleanup']
    cleanup = notifications()[-1]
    assert cleanup[1] == 'INFO' and cleanup[2]['fault'] is None
    assert cleanup[2]['request_id'] == 'req-crashed'
    assert recover(conf) == {}


def test_live_workers_operations_are_left_alone(conf, cloud, notifications):
    live = CrashingJournal(conf.state_path, ('attachment_update', 'started'))
    manager = ComputeManager(conf, CinderAPI(conf), virt.load_driver(conf),
                             Outbox(live, notifier(conf)),
                             lambda: aw_connector.get_connector_properties(conf))
    with pytest.raises(Killed):
        manager.attach_volume(caller(), INSTANCE, cloud.volume_id, '/dev/vdb')
    mark = len(cloud.calls())
    assert recover(conf) == {}  # its owner lock is still held: alive
    assert cloud.calls()[mark:] == []
    live.close()
    assert recover(conf) == {'undone': 1}


@pytest.mark.parametrize('crash_at', [
    (step, state) + mode for step in ('cinder_client', 'check_reservation', 'get_volume',
                                      'duplicate')
    for state in ('started', 'done') for mode in ((), ('lost',))],
    ids=':'.join)
def test_a_duplicate_cast_of_a_live_attachment_never_deletes_it(crash_at, conf, cloud,
                                                                 notifications):
    """Finding 1: a duplicate carrying the attachment_id of a completed attach, killed
    at any of its boundaries, or its record lost there in a power cut: recovery must
    keep the live attachment."""
    cloud.reserve_for(INSTANCE['uuid'])
    ComputeManager(conf, CinderAPI(conf), virt.load_driver(conf),
                   Outbox(Journal(conf.state_path, owner='1:1'), notifier(conf)),
                   lambda: aw_connector.get_connector_properties(conf)).attach_volume(
        caller(), INSTANCE, cloud.volume_id, '/dev/vdb', attachment_id=cloud.attachment_id)
    assert cloud.att['status'] == 'attached'
    cloud.volume.update(status='in-use', attachments=[{
        'server_id': INSTANCE['uuid'], 'attachment_id': cloud.attachment_id,
        'device': '/dev/vdb'}])
    crash(conf, crash_at, volume_id=cloud.volume_id, attachment_id=cloud.attachment_id)
    mark = len(cloud.calls())
    assert len(recover(conf)) == 1  # it got its one outcome
    assert 'DELETE /attachments/ATT' not in cloud.calls()[mark:]
    assert not cloud.att.get('deleted') and cloud.att['status'] == 'attached'
    assert virt.load_driver(conf).get_attachments(INSTANCE['uuid'])


@pytest.mark.parametrize('step', ['cinder_client', 'check_reservation', 'get_volume',
                                  'check_attach', 'connector'])
def test_a_controller_reservation_is_released_whatever_step_the_kill_hit(
        step, conf, cloud, notifications):
    """Finding 2: a kill before anything of ours was created still releases it."""
    cloud.reserve_for(INSTANCE['uuid'])
    crash(conf, (step, 'started'), volume_id=cloud.volume_id,
          attachment_id=cloud.attachment_id)
    assert recover(conf) == {'undone': 1}
    assert 'DELETE /attachments/ATT' in cloud.calls()


def test_keystone_failing_leaves_the_operation_for_the_next_round(conf, cloud,
                                                                  notifications):
    """Finding 5: a Keystone 500 in recovery neither wedges the operation nor stops
    the round."""
    crash(conf, ('attachment_update', 'done'), volume_id=cloud.volume_id)
    cloud.m.post(KEYSTONE + '/auth/tokens', status_code=500, json={'error': {}})
    assert recover(conf) == {'undo_failed': 1}
    assert not cloud.att.get('deleted')
    fault = notifications()[-1][2]['fault']
    assert fault['step'] == 'recovery' and 'release_attachment failed' in fault['message']
    keystone_token(cloud.m, 'cinder-admin-token', SERVICE_PROJECT)
    assert recover(conf) == {'undone': 1}
    assert cloud.att.get('deleted')


class UndoCrashingJournal(CrashingJournal):
    """Dies right after the pipeline journalled that an undo ran."""

    def set_undo_state(self, op_id, entry, state):
        super().set_undo_state(op_id, entry, state)
        if (entry['name'], state) == self.crash_at:
            raise Killed('undo %s' % entry['name'])


def test_finish_mode_never_completes_what_an_undo_already_took_from_the_host(
        conf, cloud, notifications):
    """Review: the pipeline's undo had let the host go when the process died; finish
    mode must go on undoing, not complete an attach the guest no longer has."""
    conf.set_override('recovery_action', 'finish', group='worker')
    cloud.fail('POST', '/attachments/%s/action' % cloud.attachment_id, 500)
    dead = UndoCrashingJournal(conf.state_path, ('driver_detach', 'done'))
    manager = ComputeManager(conf, CinderAPI(conf), virt.load_driver(conf),
                             Outbox(dead, notifier(conf)),
                             lambda: aw_connector.get_connector_properties(conf))
    with pytest.raises(Killed):
        manager.attach_volume(caller(), INSTANCE, cloud.volume_id, '/dev/vdb')
    dead.close()
    assert virt.load_driver(conf).get_attachments(INSTANCE['uuid']) == []
    cloud.m.post('%s/attachments/%s/action' % (cloud.base, cloud.attachment_id),
                 json=cloud._completed)
    assert recover(conf) == {'undone': 1}
    assert cloud.att.get('deleted')
    assert notifications()[-1][0] == 'instance.volume_attach.error'


def test_undo_runs_under_the_instance_lock(conf, cloud, notifications):
    """Review: nothing of the same instance may run between a failure and its undo."""
    import threading

    from attachworker.worker import locks
    conf.set_override('attach_flow', 'attachments', group='cinder')
    cloud.fail('POST', '/attachments/%s/action' % cloud.attachment_id, 500)
    driver = virt.load_driver(conf)
    real_detach = driver.detach_volume
    got_lock = threading.Event()
    during_undo = []

    def detach_while_another_waits(*args):
        def other():
            with locks.instance_lock(conf.state_path, INSTANCE['uuid']):
                got_lock.set()
        threading.Thread(target=other, daemon=True).start()
        during_undo.append(got_lock.wait(0.5))
        return real_detach(*args)
    driver.detach_volume = detach_while_another_waits
    journal = Journal(conf.state_path)
    ComputeManager(conf, CinderAPI(conf), driver, Outbox(journal, notifier(conf)),
                   lambda: aw_connector.get_connector_properties(conf)).attach_volume(
        caller(), INSTANCE, cloud.volume_id, '/dev/vdb')
    assert during_undo == [False], 'another operation ran during the undo'
    assert got_lock.wait(5)  # it got the lock once the operation had ended
    assert notifications()[-1][0] == 'instance.volume_attach.error'
    journal.close()


def test_an_unknown_reservation_never_takes_one_another_operation_holds(conf, cloud,
                                                                        notifications):
    """Review: the instance's reserved attachment that a journalled cast still waiting
    for its turn names (a controller's reservation) is not ours to delete."""
    cloud.listed = [{'id': 'queued-cast-reservation', 'instance': INSTANCE['uuid'],
                     'status': 'reserved', 'volume_id': cloud.volume_id}]
    crash(conf, ('attachment_create', 'started'), volume_id=cloud.volume_id)
    waiting = Journal(conf.state_path, owner='5:5')  # alive: holds its owner lock
    from attachworker.worker.operation import Operation
    queued = Operation('volume_attach', 'req-queued', conf.host, observer=waiting)
    queued.update(instance_uuid=INSTANCE['uuid'], volume_id=cloud.volume_id,
                  attachment_id='queued-cast-reservation')
    waiting.begin(queued, {})
    mark = len(cloud.calls())
    assert recover(conf) == {'undone': 1}
    assert [c for c in cloud.calls()[mark:] if c.startswith('DELETE')] == []
    waiting.close()


def test_pruning_keeps_what_recovery_needs(conf, cloud, notifications):
    """Finished operations go; an unfinished one keeps its record and its undo stack,
    and recovery still resolves it after the prune."""
    import time as _time
    ok = Journal(conf.state_path, owner='7:7')
    ComputeManager(conf, CinderAPI(conf), virt.load_driver(conf),
                   Outbox(ok, notifier(conf)),
                   lambda: aw_connector.get_connector_properties(conf)).attach_volume(
        caller(), {'uuid': '0e5e6e4c-0000-4000-8000-000000000001',
                   'project_id': SERVICE_PROJECT}, cloud.volume_id, '/dev/vdb')
    ok.close()
    cloud.volume.update(status='available', attachments=[])
    cloud.att.update(status='reserved', deleted=False, instance=None)
    crash(conf, ('attachment_update', 'done'), volume_id=cloud.volume_id)
    journal = Journal(conf.state_path)
    [orphan] = journal.orphans()
    journal.prune(_time.time() + 1)  # everything finished is older than that
    assert [o['state'] for o in journal.list()] == ['running']
    assert journal.stack(orphan['op_id'])  # its undo stack is kept
    assert journal._read('SELECT count(*) AS n FROM steps WHERE op_id != ?',
                         orphan['op_id'])[0]['n'] == 0
    journal.close()
    assert recover(conf) == {'undone': 1}
    assert cloud.att.get('deleted')


def test_own_only_retries_this_processs_failed_undos_and_nothing_else(conf, cloud):
    """A child of ``[worker] workers`` retries its own failed undos; what a dead
    process left is the main process's (its recovery keeps their order)."""
    from attachworker.worker.operation import Operation
    dead = Journal(conf.state_path, owner='424242:1')
    left = Operation('volume_attach', 'req-dead', conf.host)
    left.update(instance_uuid=INSTANCE['uuid'], volume_id=cloud.volume_id)
    dead.begin(left, {})
    dead.close()
    journal = Journal(conf.state_path)
    try:
        mine = Operation('volume_attach', 'req-mine', conf.host)
        mine.update(instance_uuid=INSTANCE['uuid'], volume_id=cloud.volume_id)
        journal.begin(mine, {})
        journal.finish(mine.id, 'undo_failed', mine.fields)
        recovery = Recovery(conf, CinderAPI(conf), virt.load_driver(conf),
                            Outbox(journal, notifier(conf)))
        assert sum(recovery.run(own_only=True).values()) == 1
        assert journal.get(left.id)['state'] == 'running'  # not the child's to take
        assert journal.get(mine.id)['state'] != 'undo_failed'
        assert sum(recovery.run().values()) == 1  # the main process's round takes it
    finally:
        journal.close()

"""Recovery of operations a dead worker left, against requests-mock'ed Cinder.

Each case journals an operation the way a worker does up to a step boundary, under
the identity of a dead process, then runs Recovery: it must make exactly the undo
calls the pipeline would have made, as the [cinder] user, and send the cast's one
terminal notification.
"""
import oslo_messaging as messaging
import pytest
import requests_mock

from attachworker import virt
from attachworker.cinder import CinderAPI
from attachworker.journal import Journal
from attachworker.notifications import Notifier
from attachworker.operation import Operation
from attachworker.outbox import Outbox
from attachworker.recovery import Recovery
from tests.unit.conftest import CINDER
from tests.unit.conftest import CinderMock
from tests.unit.test_cinder_auth import SERVICE_PROJECT
from tests.unit.test_cinder_auth import keystone_token
from tests.unit.test_cinder_auth import use_password_auth

DEAD = '999999:1'
INSTANCE = '8f0e3c4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b'
CONNECTOR = {'initiator': 'iqn.2004-10.org.attachworker:unit', 'host': 'compute-unit'}
ATT_STEPS = ['cinder_client', 'get_volume', 'check_attach', 'connector', 'attachment_create',
             'attachment_update', 'driver_attach', 'attachment_complete']
LEGACY_STEPS = ['cinder_client', 'get_volume', 'check_attach', 'connector', 'reserve',
                'initialize_connection', 'driver_attach', 'attach']


@pytest.fixture
def cloud(conf, notifications):
    with requests_mock.Mocker() as m:
        use_password_auth(conf, 'cinder')
        keystone_token(m, 'cinder-admin-token', SERVICE_PROJECT)
        cinder = CinderMock(m, project=SERVICE_PROJECT)
        notifier = Notifier(messaging.get_notification_transport(conf, url='fake://'),
                            conf.host, driver='test')
        journal = Journal(conf.state_path)
        recovery = Recovery(conf, CinderAPI(conf), virt.load_driver(conf),
                            Outbox(journal, notifier))
        yield cinder, recovery
        journal.close()


def crashed(conf, cinder, flow, last, state, attachment_known=True):
    """Journal an attach as a now-dead worker left it at ``last``:``state``."""
    dead = Journal(conf.state_path, owner=DEAD)
    op = Operation('volume_attach', 'req-crashed', conf.host, observer=dead)
    op.update(instance_uuid=INSTANCE, volume_id=cinder.volume_id, mode='rw',
              mountpoint='/dev/vdb', project_id='p', user_id='u')
    dead.begin(op, {'request_id': 'req-crashed'})
    steps = ATT_STEPS if flow == 'attachments' else LEGACY_STEPS
    results = {'connector': CONNECTOR, 'attachment_create': {'id': cinder.attachment_id}}
    if flow == 'attachments' and not attachment_known:
        results.pop('attachment_create')
    for step in steps[:steps.index(last) + 1]:
        if step == 'cinder_client':
            op.update(flow=flow)
        dead.step_started(op, step)
        if step != last or state == 'done':
            dead.step_done(op, step, results.get(step))
    if steps.index(last) >= steps.index('driver_attach'):
        # the fake virt driver really holds it, as after a real driver_attach
        virt.load_driver(conf).attach_volume(None, {'driver_volume_type': 'iscsi', 'data': {}},
                                             {'uuid': INSTANCE}, '/dev/vdb', cinder.volume_id)
    dead.close()


CASES = {
    # (flow, step, state) -> Cinder calls recovery makes, terminal event
    ('attachments', 'get_volume', 'done'): ([], 'error'),
    ('attachments', 'attachment_update', 'done'): (['DELETE /attachments/ATT'], 'error'),
    ('attachments', 'driver_attach', 'started'): (['DELETE /attachments/ATT'], 'error'),
    ('attachments', 'attachment_complete', 'started'): (['DELETE /attachments/ATT'], 'error'),
    ('attachments', 'attachment_complete', 'done'): ([], 'end'),
    ('legacy', 'reserve', 'started'): (['POST /volumes/VOL/action:os-unreserve'], 'error'),
    ('legacy', 'initialize_connection', 'done'): (
        ['POST /volumes/VOL/action:os-terminate_connection',
         'POST /volumes/VOL/action:os-unreserve'], 'error'),
    ('legacy', 'attach', 'done'): ([], 'end'),
}


@pytest.mark.parametrize('case', sorted(CASES), ids=lambda c: '%s-%s-%s' % c)
def test_recovery_undoes_what_the_dead_worker_did(case, conf, cloud, notifications):
    cinder, recovery = cloud
    flow, step, state = case
    calls, terminal = CASES[case]
    crashed(conf, cinder, flow, step, state)
    assert recovery.run() == {'completed' if terminal == 'end' else 'undone': 1}
    made = [c for c in cinder.calls() if c != 'GET /volumes/VOL']  # the final status check
    assert made == calls
    published = notifications()
    assert [e for e, _, _, _ in published] == ['instance.volume_attach.%s' % terminal]
    data = published[0][2]
    assert data['request_id'] == 'req-crashed' and data['volume_id'] == cinder.volume_id
    if terminal == 'error':
        assert data['fault']['step'] == 'recovery'
        assert data['fault']['exception'] == 'Interrupted'
        assert '%s (%s)' % (step, state) in data['fault']['message']
    # recovery used the [cinder] user's token, never a caller's
    tokens = {r.headers.get('X-Auth-Token') for r in cinder.m.request_history
              if r.url.startswith(CINDER)}
    assert tokens <= {'cinder-admin-token'}
    # the fake driver no longer holds an undone attach
    attached = virt.load_driver(conf).get_attachments(INSTANCE)
    assert bool(attached) == (terminal == 'end')
    assert recovery.run() == {}  # nothing left


def test_unknown_reservation_is_found_by_instance_and_deleted(conf, cloud, notifications):
    cinder, recovery = cloud
    cinder.m.get('%s/attachments' % cinder.base, json={'attachments': [
        {'id': cinder.attachment_id, 'instance': INSTANCE, 'status': 'reserved',
         'volume_id': cinder.volume_id},
        {'id': 'someone-else', 'instance': 'other', 'status': 'attached',
         'volume_id': cinder.volume_id}]})
    crashed(conf, cinder, 'attachments', 'attachment_create', 'started',
            attachment_known=False)
    recovery.run()
    assert [c for c in cinder.calls() if not c.startswith('GET')] == [
        'DELETE /attachments/ATT']


def test_finish_mode_completes_an_attach_the_driver_finished(conf, cloud, notifications):
    conf.set_override('recovery_action', 'finish', group='worker')
    cinder, recovery = cloud
    crashed(conf, cinder, 'attachments', 'attachment_complete', 'started')
    assert recovery.run() == {'completed': 1}
    assert cinder.calls() == ['POST /attachments/ATT/action:os-complete']
    assert [e for e, _, _, _ in notifications()] == ['instance.volume_attach.end']


def test_failed_undo_is_retried_without_a_second_notification(conf, cloud, notifications):
    cinder, recovery = cloud
    crashed(conf, cinder, 'attachments', 'attachment_update', 'done')
    cinder.fail('DELETE', '/attachments/' + cinder.attachment_id, 500)
    assert recovery.run() == {'undo_failed': 1}
    assert len(notifications()) == 1  # the cast's one .error, saying the undo failed
    assert 'only partly undone' in notifications()[0][2]['fault']['message']
    cinder.m.delete('%s/attachments/%s' % (cinder.base, cinder.attachment_id), json={})
    assert recovery.run() == {'undone': 1}
    assert len(notifications()) == 1
    assert recovery.run() == {}


def test_live_workers_operations_are_left_alone(conf, cloud, notifications):
    cinder, recovery = cloud
    live = Journal(conf.state_path)  # this process: alive
    op = Operation('volume_attach', 'req-live', conf.host, observer=live)
    live.begin(op, {})
    live.step_started(op, 'attachment_update')
    assert recovery.run() == {}
    assert cinder.calls() == [] and notifications() == []


def crashed_detach(conf, cinder, flow, last, state):
    """Journal a detach as a now-dead worker left it at ``last``:``state``."""
    dead = Journal(conf.state_path, owner=DEAD)
    op = Operation('volume_detach', 'req-detach', conf.host, observer=dead)
    op.update(instance_uuid=INSTANCE, volume_id=cinder.volume_id, flow=flow,
              attachment_id=cinder.attachment_id, mountpoint='/dev/vdb')
    dead.begin(op, {'request_id': 'req-detach'})
    steps = ['cinder_client', 'get_volume', 'connector'] + (
        ['begin_detaching'] if flow == 'legacy' else []) + ['driver_detach']
    for step in steps[:steps.index(last) + 1]:
        dead.step_started(op, step)
        if step != last or state == 'done':
            dead.step_done(op, step, CONNECTOR if step == 'connector' else None)
    dead.close()


def test_a_detach_the_host_had_begun_is_finished(conf, cloud, notifications):
    cinder, recovery = cloud
    crashed_detach(conf, cinder, 'attachments', 'driver_detach', 'started')
    assert recovery.run() == {'completed': 1}
    assert cinder.calls() == ['DELETE /attachments/ATT']
    assert [e for e, _, _, _ in notifications()] == ['instance.volume_detach.end']


def test_a_legacy_detach_that_had_not_reached_the_host_is_rolled_back(conf, cloud,
                                                                      notifications):
    cinder, recovery = cloud
    crashed_detach(conf, cinder, 'legacy', 'begin_detaching', 'done')
    assert recovery.run() == {'undone': 1}
    assert cinder.calls() == ['POST /volumes/VOL/action:os-roll_detaching']
    published = notifications()
    assert [e for e, _, _, _ in published] == ['instance.volume_detach.error']
    assert published[0][2]['fault']['step'] == 'recovery'

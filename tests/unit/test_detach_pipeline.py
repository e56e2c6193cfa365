"""The detach pipeline (RPC 1.1) against a requests-mock'ed Cinder, both flows.

Order as Nova's: the host lets go first, Cinder is told last; each failing test
asserts the exact Cinder calls, undo calls included.
"""
import pytest

from attachworker import exception
from attachworker import virt

INSTANCE = {'uuid': '8f0e3c4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b'}
LEGACY_OK = ['GET /volumes/VOL', 'POST /volumes/VOL/action:os-begin_detaching',
             'POST /volumes/VOL/action:os-terminate_connection',
             'POST /volumes/VOL/action:os-detach']
ATT_OK = ['GET /volumes/VOL', 'DELETE /attachments/ATT']


@pytest.fixture
def attached(conf, cinder_mock):
    """The volume attached to INSTANCE at /dev/vdc, in Cinder and on the host."""
    cinder_mock.volume.update(status='in-use', attachments=[{
        'server_id': INSTANCE['uuid'], 'attachment_id': cinder_mock.attachment_id,
        'device': '/dev/vdc'}])
    virt.load_driver(conf).attach_volume(None, {'driver_volume_type': 'iscsi', 'data': {}},
                                         INSTANCE, '/dev/vdc', cinder_mock.volume_id)
    return cinder_mock


def events(notifications):
    return [e for e, _, _, _ in notifications()]


@pytest.mark.parametrize('flow', ['attachments', 'legacy'])
def test_detach_lets_the_host_go_then_tells_cinder(flow, conf, make_manager, attached, ctxt,
                                                   notifications):
    conf.set_override('attach_flow', flow, group='cinder')
    make_manager().detach_volume(ctxt, INSTANCE, attached.volume_id)
    assert attached.calls() == (ATT_OK if flow == 'attachments' else LEGACY_OK)
    assert events(notifications) == ['instance.volume_detach.start',
                                     'instance.volume_detach.end']
    data = notifications()[-1][2]
    assert (data['attachment_id'], data['mountpoint'], data['flow']) == (
        attached.attachment_id, '/dev/vdc', flow)
    assert virt.load_driver(conf).get_attachments(INSTANCE['uuid']) == []
    # the legacy detach names the attachment
    if flow == 'legacy':
        assert attached.m.request_history[-1].json() == {
            'os-detach': {'attachment_id': attached.attachment_id}}


def test_a_failure_after_the_host_let_go_finishes_the_detach(conf, make_manager, attached,
                                                             ctxt, notifications, journal):
    """Once the host let go, the detach is finished, never rolled back to in-use."""
    conf.set_override('attach_flow', 'legacy', group='cinder')
    attached.fail('POST', '/volumes/%s/action' % attached.volume_id, 500,
                  'os-terminate_connection')
    make_manager().detach_volume(ctxt, INSTANCE, attached.volume_id)
    # terminate_connection is idempotent: retried once ([cinder] http_retries = 1),
    # then the finish entry tries the rest of the detach again
    assert attached.calls() == LEGACY_OK[:3] + [
        'POST /volumes/VOL/action:os-terminate_connection'] * 3
    assert 'os-roll_detaching' not in str(attached.calls())
    fault = notifications()[-1][2]['fault']
    assert (fault['step'], fault['exception']) == ('terminate_connection', 'CinderUnavailable')
    assert 'undo failed: finish_detach' in fault['message']
    assert journal.list(limit=1)[0]['state'] == 'undo_failed'  # reconcile finishes it


def test_a_failure_before_the_host_let_go_rolls_back(conf, make_manager, attached, ctxt,
                                                     notifications):
    conf.set_override('attach_flow', 'legacy', group='cinder')
    driver = virt.load_driver(conf)

    def busy(*args):
        raise exception.DeviceInUse(mountpoint='/dev/vdc', instance_uuid=INSTANCE['uuid'])
    driver.detach_volume = busy
    make_manager(virt_driver=driver).detach_volume(ctxt, INSTANCE, attached.volume_id)
    assert attached.calls() == LEGACY_OK[:2] + ['POST /volumes/VOL/action:os-roll_detaching']
    assert notifications()[-1][2]['fault']['step'] == 'driver_detach'


def test_a_driver_failure_that_left_the_disk_in_the_guest_rolls_back(
        conf, make_manager, attached, ctxt, notifications):
    """An unexpected driver error is ambiguous, unless the host still has the volume:
    then nothing changed, and the detach is rolled back, not finished later."""
    conf.set_override('attach_flow', 'legacy', group='cinder')
    driver = virt.load_driver(conf)

    def guest_holds_on(*args):
        raise exception.VirtDriverError(reason='the guest did not release the disk')
    driver.detach_volume = guest_holds_on
    make_manager(virt_driver=driver).detach_volume(ctxt, INSTANCE, attached.volume_id)
    assert attached.calls() == LEGACY_OK[:2] + ['POST /volumes/VOL/action:os-roll_detaching']
    fault = notifications()[-1][2]['fault']
    assert (fault['step'], fault['exception']) == ('driver_detach', 'HostKeptTheVolume')


def test_detach_follows_the_record_not_todays_flow(conf, make_manager, cinder_mock, ctxt,
                                                   notifications):
    """Finding 6: attached by the legacy flow, detached after attach_flow changed."""
    conf.set_override('attach_flow', 'legacy', group='cinder')
    make_manager().attach_volume(ctxt, INSTANCE, cinder_mock.volume_id, '/dev/vdc')
    conf.set_override('attach_flow', 'attachments', group='cinder')
    mark = len(cinder_mock.calls())
    make_manager().detach_volume(ctxt, INSTANCE, cinder_mock.volume_id)
    assert cinder_mock.calls()[mark:] == LEGACY_OK
    assert notifications()[-1][2]['flow'] == 'legacy'


def test_detach_with_an_attachment_id_that_does_not_match_is_an_error(
        conf, make_manager, attached, ctxt, notifications):
    make_manager().detach_volume(ctxt, INSTANCE, attached.volume_id,
                                 attachment_id='0e5e6e4c-0000-4000-8000-000000000000')
    fault = notifications()[-1][2]['fault']
    assert fault['exception'] == 'InvalidInput'
    assert 'is not the attachment of volume' in fault['message']
    assert attached.calls() == ['GET /volumes/VOL']
    assert virt.load_driver(conf).get_attachments(INSTANCE['uuid'])  # still on the host


def test_detach_of_a_volume_not_attached_is_done_without_change(make_manager, cinder_mock,
                                                                ctxt, notifications):
    make_manager().detach_volume(ctxt, INSTANCE, cinder_mock.volume_id)
    assert cinder_mock.calls() == ['GET /volumes/VOL']
    assert events(notifications)[-1] == 'instance.volume_detach.end'


def test_malformed_detach_is_refused_before_any_cinder_call(make_manager, cinder_mock, ctxt,
                                                            notifications):
    make_manager().detach_volume(ctxt, {'uuid': 'nope'}, cinder_mock.volume_id, force=True)
    assert cinder_mock.calls() == []
    fault = notifications()[-1][2]['fault']
    assert (fault['step'], fault['exception']) == ('validate', 'InvalidInput')
    assert "unexpected arguments: 'force'" in fault['message']

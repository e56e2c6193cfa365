"""The detach pipeline (RPC 1.1) against a requests-mock'ed Cinder, both flows.

Order as Nova's: the host lets go first, Cinder is told last; each failing test
asserts the exact Cinder calls, undo calls included.
"""
import pytest

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


def test_a_failure_before_cinder_is_told_rolls_back(conf, make_manager, attached, ctxt,
                                                    notifications):
    conf.set_override('attach_flow', 'legacy', group='cinder')
    attached.fail('POST', '/volumes/%s/action' % attached.volume_id, 500,
                  'os-terminate_connection')
    make_manager().detach_volume(ctxt, INSTANCE, attached.volume_id)
    # terminate_connection is idempotent: retried once ([cinder] http_retries = 1)
    assert attached.calls() == LEGACY_OK[:3] + [
        'POST /volumes/VOL/action:os-terminate_connection',
        'POST /volumes/VOL/action:os-roll_detaching']
    fault = notifications()[-1][2]['fault']
    assert (fault['step'], fault['exception']) == ('terminate_connection', 'CinderUnavailable')


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

"""Malformed casts, unattachable volumes, and a Cinder that does not answer.

Each ends in one ``.error`` naming what is wrong, with no Cinder call for a
malformed cast, and the manager keeps serving (nothing raises out of it).
"""
import pytest
import requests

from attachworker import virt
from tests.unit.conftest import CINDER

GOOD = '8f0e3c4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b'
MEGA = 'x' * (1 << 20)

MALFORMED = {
    'no instance': (dict(instance=None), 'instance is required'),
    'instance not a dict': (dict(instance='8f0e3c4a'), 'instance must be a dict, got str'),
    'instance a list': (dict(instance=[GOOD]), 'instance must be a dict, got list'),
    'instance without uuid': (dict(instance={'name': 'x'}), 'instance.uuid is required'),
    'instance uuid not a UUID': (dict(instance={'uuid': 'not-a-uuid'}),
                                 'instance.uuid is not a UUID'),
    'volume id not a UUID': (dict(volume_id='vol-1'), 'volume_id is not a UUID'),
    'volume id an int': (dict(volume_id=42), 'volume_id must be a string, got int'),
    'mode outside rw/ro': (dict(mode='rwx'), 'mode must be rw or ro'),
    'mountpoint with a digit': (dict(mountpoint='/dev/vdb1'), 'mountpoint must look like'),
    'mountpoint path traversal': (dict(mountpoint='/dev/../etc'), 'mountpoint must look like'),
    'megabyte volume id': (dict(volume_id=MEGA), 'volume_id is too long (1048576 characters'),
    'megabyte display name': (dict(instance={'uuid': GOOD, 'display_name': MEGA}),
                              'instance.display_name is too long'),
    'megabyte mountpoint': (dict(mountpoint='/dev/' + 'a' * (1 << 20)),
                            'mountpoint is too long'),
    'attachment id not a UUID': (dict(attachment_id='att'), 'attachment_id is not a UUID'),
    'extra arguments': (dict(extra={'block_device_mapping': 1}, force=True),
                        "unexpected arguments: 'extra', 'force'"),
}


@pytest.mark.parametrize('case', sorted(MALFORMED))
def test_malformed_cast_is_refused_before_any_cinder_call(case, make_manager, cinder_mock,
                                                          ctxt, notifications):
    changes, message = MALFORMED[case]
    args = dict(instance={'uuid': GOOD}, volume_id=cinder_mock.volume_id,
                mountpoint='/dev/vdb', mode='rw')
    args.update(changes)
    manager = make_manager()
    manager.attach_volume(ctxt, **args)  # must not raise

    assert cinder_mock.m.request_history == []
    published = notifications()
    assert len(published) == 1
    event, priority, data, message_body = published[0]
    assert (event, priority) == ('instance.volume_attach.error', 'ERROR')
    assert data['fault']['step'] == 'validate'
    assert data['fault']['exception'] == 'InvalidInput'
    assert data['fault']['code'] == 400
    assert message in data['fault']['message']
    # a huge argument never makes a huge notification
    assert len(str(message_body)) < 8192

    # the same manager still attaches the next, well-formed cast
    manager.attach_volume(ctxt, {'uuid': GOOD}, cinder_mock.volume_id, '/dev/vdb')
    assert notifications()[-1][0] == 'instance.volume_attach.end'


@pytest.mark.parametrize('status,multiattach,expected', [
    ('in-use', False, 'its status is in-use, expected available (attached elsewhere and '
                      'not multiattach)'),
    ('error', False, 'its status is error'),
    ('attaching', False, 'its status is attaching'),
    ('reserved', False, 'its status is reserved'),
])
def test_volume_in_wrong_status_is_refused_without_change(status, multiattach, expected,
                                                          make_manager, cinder_mock, ctxt,
                                                          notifications):
    cinder_mock.volume.update(status=status, multiattach=multiattach)
    make_manager().attach_volume(ctxt, {'uuid': GOOD}, cinder_mock.volume_id, '/dev/vdb')
    assert cinder_mock.calls() == ['GET /volumes/VOL']
    _, _, data, _ = notifications()[-1]
    assert data['fault']['step'] == 'check_attach'
    assert data['fault']['exception'] == 'InvalidVolume'
    assert expected in data['fault']['message']


def test_multiattach_in_use_volume_can_be_attached_again(make_manager, cinder_mock, ctxt,
                                                         notifications):
    cinder_mock.volume.update(status='in-use', multiattach=True, attachments=[
        {'server_id': 'other-instance', 'attachment_id': 'a1', 'device': '/dev/vdb'}])
    make_manager().attach_volume(ctxt, {'uuid': GOOD}, cinder_mock.volume_id, '/dev/vdb')
    assert notifications()[-1][0] == 'instance.volume_attach.end'


def test_cross_az_attach_refused_when_disabled(conf, make_manager, cinder_mock, ctxt,
                                               notifications):
    conf.set_override('cross_az_attach', False, group='cinder')
    make_manager().attach_volume(ctxt, {'uuid': GOOD, 'availability_zone': 'az2'},
                                 cinder_mock.volume_id, '/dev/vdb')
    assert cinder_mock.calls() == ['GET /volumes/VOL']
    assert 'availability zone nova and the instance in az2' in \
        notifications()[-1][2]['fault']['message']


def test_duplicate_cast_makes_no_second_attachment(make_manager, cinder_mock, ctxt,
                                                   notifications):
    manager = make_manager()
    manager.attach_volume(ctxt, {'uuid': GOOD}, cinder_mock.volume_id, '/dev/vdb')
    first_calls = len(cinder_mock.calls())
    # Cinder now reports the volume attached to this instance
    cinder_mock.volume.update(status='in-use', attachments=[
        {'server_id': GOOD, 'attachment_id': cinder_mock.attachment_id, 'device': '/dev/vdb'}])
    manager.attach_volume(ctxt, {'uuid': GOOD}, cinder_mock.volume_id, '/dev/vdb')
    assert cinder_mock.calls()[first_calls:] == ['GET /volumes/VOL']
    events = [e for e, _, _, _ in notifications()]
    assert events == ['instance.volume_attach.start', 'instance.volume_attach.end'] * 2
    assert notifications()[-1][2]['attachment_id'] == cinder_mock.attachment_id


def test_duplicate_with_a_second_reservation_releases_it(make_manager, cinder_mock, ctxt,
                                                         notifications, conf):
    virt.load_driver(conf).attach_volume(None, {'driver_volume_type': 'iscsi', 'data': {}},
                                         {'uuid': GOOD}, '/dev/vdb', cinder_mock.volume_id)
    cinder_mock.reserve_for(GOOD)
    cinder_mock.volume.update(status='in-use', attachments=[
        {'server_id': GOOD, 'attachment_id': 'first-attachment', 'device': '/dev/vdb'}])
    make_manager().attach_volume(ctxt, {'uuid': GOOD}, cinder_mock.volume_id, '/dev/vdb',
                                 attachment_id=cinder_mock.attachment_id)
    # the cast's reservation is checked, then released; the live one is untouched
    assert cinder_mock.calls() == ['GET /attachments/ATT', 'GET /volumes/VOL',
                                   'GET /attachments/ATT', 'DELETE /attachments/ATT']
    assert notifications()[-1][0] == 'instance.volume_attach.end'


def test_attached_in_cinder_but_not_on_this_host_is_no_duplicate(make_manager, cinder_mock,
                                                                 ctxt, notifications):
    cinder_mock.volume.update(status='in-use', attachments=[
        {'server_id': GOOD, 'attachment_id': 'elsewhere', 'device': '/dev/vdb'}])
    make_manager().attach_volume(ctxt, {'uuid': GOOD}, cinder_mock.volume_id, '/dev/vdb')
    fault = notifications()[-1][2]['fault']
    assert 'this host does not have it' in fault['message']
    assert cinder_mock.calls() == ['GET /volumes/VOL']


def test_cinder_not_answering(make_manager, cinder_mock, ctxt, notifications):
    url = '%s/v3/%s/volumes/%s' % (CINDER, ctxt.project_id, cinder_mock.volume_id)
    cinder_mock.m.get(url, exc=requests.exceptions.ConnectionError('refused'))
    make_manager().attach_volume(ctxt, {'uuid': GOOD}, cinder_mock.volume_id, '/dev/vdb')
    fault = notifications()[-1][2]['fault']
    assert (fault['step'], fault['exception'], fault['code']) == (
        'get_volume', 'CinderUnavailable', 503)
    # connect failures are retried http_retries (1) times
    assert cinder_mock.calls() == ['GET /volumes/VOL'] * 2


def test_cinder_timing_out(make_manager, cinder_mock, ctxt, notifications):
    url = '%s/v3/%s/volumes/%s' % (CINDER, ctxt.project_id, cinder_mock.volume_id)
    cinder_mock.m.get(url, exc=requests.exceptions.ReadTimeout('slow'))
    make_manager().attach_volume(ctxt, {'uuid': GOOD}, cinder_mock.volume_id, '/dev/vdb')
    fault = notifications()[-1][2]['fault']
    assert (fault['exception'], fault['code']) == ('CinderUnavailable', 504)

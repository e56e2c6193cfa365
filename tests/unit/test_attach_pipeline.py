"""The attach pipeline against a requests-mock'ed Cinder, both flows.

Each failure test asserts the exact Cinder calls made, in order: the steps up to
the failure, then the undo calls and nothing else; and that the ``.error`` names
the failing step.
"""
import contextlib

import pytest

from attachworker import virt
from tests.unit.conftest import CinderMock

INSTANCE = {'uuid': '8f0e3c4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b', 'project_id': 'p1',
            'user_id': 'u1'}

ATT_OK = ['GET /volumes/VOL', 'POST /attachments', 'PUT /attachments/ATT',
          'POST /attachments/ATT/action:os-complete']
LEGACY_OK = ['GET /volumes/VOL', 'POST /volumes/VOL/action:os-reserve',
             'POST /volumes/VOL/action:os-initialize_connection',
             'POST /volumes/VOL/action:os-attach']


def outcome(notifications):
    """The last notification: (event_type, priority, payload data)."""
    event, priority, data, _ = notifications()[-1]
    return event, priority, data


@pytest.fixture(params=['attachments', 'legacy'])
def flow(request, conf):
    conf.set_override('attach_flow', request.param, group='cinder')
    return request.param


def test_attachments_flow_succeeds(make_manager, cinder_mock, ctxt, notifications, conf):
    manager = make_manager()
    manager.attach_volume(ctxt, INSTANCE, cinder_mock.volume_id, '/dev/vdb')
    assert cinder_mock.calls() == ATT_OK
    events = [(e, p) for e, p, _, _ in notifications()]
    assert events == [('instance.volume_attach.start', 'INFO'),
                      ('instance.volume_attach.end', 'INFO')]
    _, _, data = outcome(notifications)
    assert data['flow'] == 'attachments'
    assert data['attachment_id'] == cinder_mock.attachment_id
    assert data['driver_volume_type'] == 'iscsi'
    assert data['fault'] is None and data['duration_ms'] >= 0
    attached = virt.load_driver(conf).get_attachments(INSTANCE['uuid'])
    assert [(a['volume_id'], a['mountpoint']) for a in attached] == [
        (cinder_mock.volume_id, '/dev/vdb')]
    # the connector sent to Cinder carries the host's initiator and the mountpoint
    put = [r for r in cinder_mock.m.request_history if r.method == 'PUT'][0].json()
    assert put['attachment']['connector']['initiator'] == 'iqn.2004-10.org.attachworker:unit'
    assert put['attachment']['connector']['mountpoint'] == '/dev/vdb'
    assert put['attachment']['connector']['host'] == 'compute-unit'


def test_legacy_flow_succeeds(make_manager, cinder_mock, ctxt, notifications, conf):
    conf.set_override('attach_flow', 'legacy', group='cinder')
    make_manager().attach_volume(ctxt, INSTANCE, cinder_mock.volume_id, '/dev/vdc', 'ro')
    # the attachment id Cinder made is read back for the notification
    assert cinder_mock.calls() == LEGACY_OK + ['GET /volumes/VOL']
    attach = cinder_mock.m.request_history[-2].json()['os-attach']
    assert attach == {'instance_uuid': INSTANCE['uuid'], 'mountpoint': '/dev/vdc',
                      'mode': 'ro', 'host_name': 'compute-unit'}
    event, _, data = outcome(notifications)
    assert event == 'instance.volume_attach.end' and data['flow'] == 'legacy'
    assert data['attachment_id'] == cinder_mock.attachment_id


def test_auto_flow_falls_back_to_legacy_below_3_44(make_manager, ctxt, notifications):
    import requests_mock
    with requests_mock.Mocker() as m:
        old = CinderMock(m, max_version='3.27')
        make_manager().attach_volume(ctxt, INSTANCE, old.volume_id, '/dev/vdb')
        assert old.calls() == LEGACY_OK + ['GET /volumes/VOL']
    assert outcome(notifications)[2]['flow'] == 'legacy'


def test_device_name_is_chosen_when_not_given(make_manager, cinder_mock, ctxt,
                                              notifications):
    make_manager().attach_volume(ctxt, INSTANCE, cinder_mock.volume_id)
    event, _, data = outcome(notifications)
    assert event.endswith('.end') and data['mountpoint'] == '/dev/vdb'


FAILURES = {
    # (flow, method, url suffix, action, status) -> (expected calls, failing step, exception)
    'att-get-404': ('attachments', 'GET', '/volumes/VOL', None, 404,
                    ['GET /volumes/VOL'], 'get_volume', 'VolumeNotFound'),
    'att-get-500-retried': ('attachments', 'GET', '/volumes/VOL', None, 500,
                            ['GET /volumes/VOL', 'GET /volumes/VOL'], 'get_volume',
                            'CinderUnavailable'),
    'att-create-400': ('attachments', 'POST', '/attachments', None, 400,
                       ['GET /volumes/VOL', 'POST /attachments'], 'attachment_create',
                       'InvalidVolume'),
    # a 5xx leaves open whether Cinder made it: look for ours by instance (none here)
    'att-create-500-not-retried': ('attachments', 'POST', '/attachments', None, 500,
                                   ['GET /volumes/VOL', 'POST /attachments',
                                    'GET /attachments?volume_id=VOL'],
                                   'attachment_create', 'CinderUnavailable'),
    'att-update-500': ('attachments', 'PUT', '/attachments/ATT', None, 500,
                       ['GET /volumes/VOL', 'POST /attachments', 'PUT /attachments/ATT',
                        'GET /attachments/ATT', 'DELETE /attachments/ATT'],
                       'attachment_update', 'CinderUnavailable'),
    'att-update-403': ('attachments', 'PUT', '/attachments/ATT', None, 403,
                       ['GET /volumes/VOL', 'POST /attachments', 'PUT /attachments/ATT',
                        'GET /attachments/ATT', 'DELETE /attachments/ATT'],
                       'attachment_update', 'CinderForbidden'),
    'att-complete-500': ('attachments', 'POST', '/attachments/ATT/action', None, 500,
                         # the complete's undo deletes it; the create's finds it gone
                         ATT_OK + ['GET /attachments/ATT', 'DELETE /attachments/ATT',
                                   'GET /attachments/ATT'], 'attachment_complete',
                         'CinderUnavailable'),
    'legacy-get-404': ('legacy', 'GET', '/volumes/VOL', None, 404,
                       ['GET /volumes/VOL'], 'get_volume', 'VolumeNotFound'),
    'legacy-reserve-400': ('legacy', 'POST', '/volumes/VOL/action', 'os-reserve', 400,
                           LEGACY_OK[:2], 'reserve', 'InvalidVolume'),
    'legacy-reserve-503': ('legacy', 'POST', '/volumes/VOL/action', 'os-reserve', 503,
                           LEGACY_OK[:2] + ['POST /volumes/VOL/action:os-unreserve'],
                           'reserve', 'CinderUnavailable'),
    'legacy-init-500': ('legacy', 'POST', '/volumes/VOL/action', 'os-initialize_connection',
                        500, LEGACY_OK[:3] + ['POST /volumes/VOL/action:os-terminate_connection',
                                              'POST /volumes/VOL/action:os-unreserve'],
                        'initialize_connection', 'CinderUnavailable'),
    # the attach may have happened: look, detach if so (not here), then undo the rest
    'legacy-attach-500': ('legacy', 'POST', '/volumes/VOL/action', 'os-attach', 500,
                          LEGACY_OK + ['GET /volumes/VOL',
                                       'POST /volumes/VOL/action:os-terminate_connection',
                                       'POST /volumes/VOL/action:os-unreserve'],
                          'attach', 'CinderUnavailable'),
}


@pytest.mark.parametrize('case', sorted(FAILURES))
def test_cinder_failure_undoes_exactly_what_was_done(case, make_manager, cinder_mock, ctxt,
                                                     notifications, conf):
    flow, method, suffix, action, status, calls, step, exc = FAILURES[case]
    conf.set_override('attach_flow', flow, group='cinder')
    suffix = suffix.replace('VOL', cinder_mock.volume_id).replace(
        'ATT', cinder_mock.attachment_id)
    cinder_mock.fail(method, suffix, status, action)
    make_manager().attach_volume(ctxt, INSTANCE, cinder_mock.volume_id, '/dev/vdb')

    assert cinder_mock.calls() == calls
    event, priority, data = outcome(notifications)
    assert (event, priority) == ('instance.volume_attach.error', 'ERROR')
    assert data['fault']['step'] == step
    assert data['fault']['exception'] == exc
    assert data['fault']['code'] == (status if status != 400 or exc != 'InvalidVolume'
                                     else 400)
    assert data['flow'] == flow
    # the virt driver holds nothing for the instance afterwards
    assert virt.load_driver(conf).get_attachments(INSTANCE['uuid']) == []


def test_driver_failure_is_undone_in_cinder(flow, make_manager, cinder_mock, ctxt,
                                            notifications, conf):
    # the driver refuses a connection type it does not know: a real driver failure
    cinder_mock.connection_info['driver_volume_type'] = 'quobyte-x'
    make_manager().attach_volume(ctxt, INSTANCE, cinder_mock.volume_id, '/dev/vdb')
    if flow == 'attachments':
        assert cinder_mock.calls() == ATT_OK[:3] + ['GET /attachments/ATT',
                                                     'DELETE /attachments/ATT']
    else:
        assert cinder_mock.calls() == LEGACY_OK[:3] + [
            'POST /volumes/VOL/action:os-terminate_connection',
            'POST /volumes/VOL/action:os-unreserve']
    event, _, data = outcome(notifications)
    assert event.endswith('.error')
    assert data['fault']['step'] == 'driver_attach'
    assert data['fault']['exception'] == 'VirtDriverError'


def test_failed_undo_is_reported_in_the_fault(make_manager, cinder_mock, ctxt, notifications):
    cinder_mock.fail('PUT', '/attachments/' + cinder_mock.attachment_id, 500)
    cinder_mock.fail('DELETE', '/attachments/' + cinder_mock.attachment_id, 500)
    make_manager().attach_volume(ctxt, INSTANCE, cinder_mock.volume_id, '/dev/vdb')
    # DELETE is idempotent: retried once ([cinder] http_retries = 1) before giving up
    assert cinder_mock.calls()[-3:] == ['GET /attachments/ATT'] + ['DELETE /attachments/ATT'] * 2
    fault = outcome(notifications)[2]['fault']
    assert fault['step'] == 'attachment_update'
    assert 'undo failed: release_attachment' in fault['message']


def test_controller_reservation_is_used_and_released_on_failure(make_manager, cinder_mock,
                                                                ctxt, notifications):
    cinder_mock.reserve_for(INSTANCE['uuid'])
    cinder_mock.fail('PUT', '/attachments/' + cinder_mock.attachment_id, 503)
    make_manager().attach_volume(ctxt, INSTANCE, cinder_mock.volume_id, '/dev/vdb',
                                 attachment_id=cinder_mock.attachment_id)
    # no attachment_create: the controller reserved; the reservation is deleted on failure
    assert cinder_mock.calls() == ['GET /attachments/ATT', 'GET /volumes/VOL',
                                   'PUT /attachments/ATT',
                                   'GET /attachments/ATT', 'DELETE /attachments/ATT']
    assert outcome(notifications)[2]['attachment_id'] == cinder_mock.attachment_id


def test_attachments_flow_hands_the_driver_nested_connection_info(make_manager, cinder_mock,
                                                                  ctxt, conf):
    seen = {}
    driver = virt.load_driver(conf)
    real_attach = driver.attach_volume

    def spy(context, connection_info, *args):
        seen.update(connection_info)
        return real_attach(context, connection_info, *args)
    driver.attach_volume = spy
    make_manager(virt_driver=driver).attach_volume(ctxt, INSTANCE, cinder_mock.volume_id,
                                                   '/dev/vdb')
    assert seen['driver_volume_type'] == 'iscsi'
    assert seen['data']['target_iqn'] == 'iqn.2010-10.org.openstack:volume-x'
    assert seen['data']['access_mode'] == 'rw'
    assert 'attachment_id' not in seen['data']


def test_reservation_made_before_a_timeout_is_found_and_deleted(make_manager, cinder_mock,
                                                                ctxt, notifications):
    import requests
    # Cinder made the attachment, but its answer never came back
    cinder_mock.m.post('%s/attachments' % cinder_mock.base,
                       exc=requests.exceptions.ReadTimeout('no answer'))
    cinder_mock.listed = [{'id': cinder_mock.attachment_id, 'instance': INSTANCE['uuid'],
                           'status': 'reserved', 'volume_id': cinder_mock.volume_id},
                          {'id': 'other', 'instance': 'someone-else', 'status': 'attached',
                           'volume_id': cinder_mock.volume_id}]
    make_manager().attach_volume(ctxt, INSTANCE, cinder_mock.volume_id, '/dev/vdb')
    # sent once (never re-sent after a timeout), then ours is found and deleted
    assert cinder_mock.calls() == ['GET /volumes/VOL', 'POST /attachments',
                                   'GET /attachments?volume_id=VOL',
                                   'DELETE /attachments/ATT']
    fault = outcome(notifications)[2]['fault']
    assert (fault['step'], fault['code']) == ('attachment_create', 504)


def test_legacy_attach_done_before_a_timeout_is_detached(make_manager, cinder_mock, ctxt,
                                                         notifications, conf):
    import requests
    conf.set_override('attach_flow', 'legacy', group='cinder')
    real_action = cinder_mock._action

    def attach_then_time_out(request, context):
        real_action(request, context)  # Cinder attaches...
        if 'os-attach' in request.json():
            raise requests.exceptions.ReadTimeout('...but its answer is lost')
        return real_action(request, context)
    cinder_mock.m.post('%s/volumes/%s/action' % (cinder_mock.base, cinder_mock.volume_id),
                       json=attach_then_time_out)
    make_manager().attach_volume(ctxt, INSTANCE, cinder_mock.volume_id, '/dev/vdb')
    assert cinder_mock.calls() == LEGACY_OK + [
        'GET /volumes/VOL', 'POST /volumes/VOL/action:os-detach',
        'POST /volumes/VOL/action:os-terminate_connection',
        'POST /volumes/VOL/action:os-unreserve']
    assert outcome(notifications)[0] == 'instance.volume_attach.error'


def journal_writes(journal, monkeypatch):
    """[(waited, what)] of each journal write: what = the last step row it inserts
    ('step:state'), or 'begin', 'finish', 'sent'."""
    writes = []
    real = journal._group.write

    @contextlib.contextmanager
    def write(wait=True, track=None):
        seen = []

        class Recording:
            def __init__(self, db):
                self._db = db

            def execute(self, sql, params=()):
                seen.append((sql, [params]))
                return self._db.execute(sql, params)

            def executemany(self, sql, rows):
                rows = list(rows)
                seen.append((sql, rows))
                return self._db.executemany(sql, rows)

        with real(wait, track) as db:
            yield Recording(db)
        what = None
        for sql, rows in seen:
            if sql.startswith('INSERT INTO operations'):
                what = 'begin'
            elif sql.startswith('INSERT INTO steps'):
                what = '%s:%s' % tuple(rows[-1][2:4])
            elif sql.startswith('UPDATE operations SET state='):
                what = 'finish'
            elif sql.startswith('UPDATE outbox SET sent_at'):
                what = 'sent'
        writes.append((wait, what))
    monkeypatch.setattr(journal._group, 'write', write)
    return writes


@pytest.mark.parametrize('flow, waited', [
    ('attachments', ['begin', 'reserve_device:started', 'attachment_create:started',
                     'attachment_update:started', 'driver_attach:started',
                     'attachment_complete:started', 'attachment_complete:done', 'finish']),
    ('legacy', ['begin', 'reserve_device:started', 'reserve:started',
                'initialize_connection:started', 'driver_attach:started',
                'attach:started', 'attach:done', 'finish']),
])
def test_an_attach_waits_for_the_disk_only_before_it_acts(flow, waited, conf, make_manager,
                                                          cinder_mock, ctxt, journal,
                                                          monkeypatch):
    """The journal's rule: a record waits for its fsync when the step after it acts on
    what it arms, when it commits (the outcome is told next), or when an end before
    it armed or rearmed something (the attachment id, the resume); nothing else."""
    conf.set_override('attach_flow', flow, group='cinder')
    writes = journal_writes(journal, monkeypatch)
    make_manager().attach_volume(ctxt, INSTANCE, cinder_mock.volume_id, '/dev/vdb')
    assert [what for wait, what in writes if wait] == waited
    not_waited = [what for wait, what in writes if not wait]
    decided = {'attachments': ['attachment_create:done', 'driver_attach:done'],
               'legacy': ['driver_attach:done']}[flow]
    assert set(decided) <= set(not_waited)
    assert not_waited.count('sent') == 2   # .start and .end: published, then marked
    assert journal._unsynced == {} and journal._deferred == {}

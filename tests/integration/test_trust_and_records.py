"""Controller-made attachments, detach by the attachment's record, and tokenless casts,
against the real Keystone + Cinder (issue 8, findings 2, 6 and 10).

Each case is judged by what Cinder reports afterwards.
"""
import sqlite3
import uuid

from attachworker import context as aw_context
from tests.integration.conftest import caller_context
from tests.integration.conftest import cinder_for


def outcome(ctl, ctxt, worker, timeout=60):
    seen = ctl.outcomes([ctxt.request_id], timeout)
    events = [e for e in seen.get(ctxt.request_id, []) if e.endswith(('.end', '.error'))]
    assert len(events) == 1, (events, worker.logs()[-3000:])
    return events[0].rsplit('.', 1)[1]


def test_a_controller_attachment_is_checked_used_and_released(make_worker, controller,
                                                              volumes, sessions,
                                                              admin_cinder):
    # cross_az_attach off: a cast naming another AZ fails at check_attach
    worker = make_worker(cinder__cross_az_attach='false')
    ctl = controller(worker)
    vid, other_vid = volumes.make(2)
    demo = cinder_for(sessions['demo'])
    instance = str(uuid.uuid4())

    # a reservation for another volume is refused, and neither volume is touched
    reservation = demo.attachments.create(other_vid, None, instance)
    ctxt = caller_context(sessions['demo'])
    ctl.api.attach_volume(ctxt, worker.host, {'uuid': instance,
                                              'project_id': ctxt.project_id}, vid,
                          '/dev/vdb', attachment_id=reservation['id'])
    assert outcome(ctl, ctxt, worker) == 'error'
    assert 'not for this cast' in ctl.fault(ctxt.request_id)['message']
    assert admin_cinder.volumes.get(vid).status == 'available'
    assert admin_cinder.volumes.get(other_vid).status == 'reserved'
    assert admin_cinder.attachments.show(reservation['id']).status == 'reserved'

    # the right one is used: the volume ends in-use with that very attachment
    mine = demo.attachments.create(vid, None, instance)
    ctxt = caller_context(sessions['demo'])
    ctl.api.attach_volume(ctxt, worker.host, {'uuid': instance,
                                              'project_id': ctxt.project_id}, vid,
                          '/dev/vdb', attachment_id=mine['id'])
    assert outcome(ctl, ctxt, worker) == 'end'
    volume = admin_cinder.volumes.get(vid)
    assert volume.status == 'in-use'
    assert [a['attachment_id'] for a in volume.attachments] == [mine['id']]

    # a duplicate carrying the same attachment changes nothing
    ctxt = caller_context(sessions['demo'])
    ctl.api.attach_volume(ctxt, worker.host, {'uuid': instance,
                                              'project_id': ctxt.project_id}, vid,
                          '/dev/vdb', attachment_id=mine['id'])
    assert outcome(ctl, ctxt, worker) == 'end'
    assert [a['attachment_id'] for a in admin_cinder.volumes.get(vid).attachments] == [
        mine['id']]

    # a reservation whose attach fails early (in another AZ, cross_az_attach off) is
    # released: the volume does not stay reserved
    (third,) = volumes.make()
    reserved = demo.attachments.create(third, None, instance)
    ctxt = caller_context(sessions['demo'])
    ctl.api.attach_volume(ctxt, worker.host, {'uuid': instance, 'availability_zone':
                                              'elsewhere', 'project_id': ctxt.project_id},
                          third, '/dev/vdc', attachment_id=reserved['id'])
    assert outcome(ctl, ctxt, worker) == 'error'
    assert ctl.fault(ctxt.request_id)['step'] == 'check_attach'
    assert admin_cinder.volumes.get(third).status == 'available'


def test_legacy_attach_is_detached_by_the_legacy_flow_after_the_flow_changed(
        make_worker, controller, volumes, sessions, admin_cinder, tmp_path):
    legacy = make_worker(cinder__attach_flow='legacy')
    ctl = controller(legacy)
    (vid,) = volumes.make()
    instance = str(uuid.uuid4())
    ctxt = caller_context(sessions['demo'])
    ctl.api.attach_volume(ctxt, legacy.host, {'uuid': instance,
                                              'project_id': ctxt.project_id}, vid, '/dev/vdb')
    assert outcome(ctl, ctxt, legacy) == 'end'
    legacy.stop()
    # the same host comes back configured for the attachments flow
    legacy.config.write_text(legacy.config.read_text().replace(
        'attach_flow = legacy', 'attach_flow = attachments'))
    legacy.start()
    ctxt = caller_context(sessions['demo'])
    ctl.api.detach_volume(ctxt, legacy.host, {'uuid': instance}, vid)
    assert outcome(ctl, ctxt, legacy) == 'end'
    end = ctl.notes(ctxt.request_id)[-1]['payload']['attachworker_object.data']
    assert end['flow'] == 'legacy'
    volume = admin_cinder.volumes.get(vid)
    assert volume.status == 'available' and volume.attachments == []
    # the legacy calls were made, the backend's export terminated
    with sqlite3.connect(legacy.state / 'journal.sqlite') as db:
        steps = [row[0] for row in db.execute(
            "SELECT s.step FROM steps s JOIN operations o ON o.op_id = s.op_id "
            "WHERE o.request_id = ? AND s.state = 'done' ORDER BY s.seq",
            (ctxt.request_id,))]
    assert steps[-3:] == ['begin_detaching', 'driver_detach', 'terminate_connection',
                          'detach'][-3:] and 'attachment_delete' not in steps, steps
    assert 'begin_detaching' in steps
    assert admin_cinder.attachments.list(search_opts={'volume_id': vid,
                                                      'all_tenants': 1}) == []


def test_a_detach_naming_another_attachment_is_refused(make_worker, controller, volumes,
                                                       sessions, admin_cinder):
    worker = make_worker()
    ctl = controller(worker)
    (vid,) = volumes.make()
    instance = str(uuid.uuid4())
    ctxt = caller_context(sessions['demo'])
    ctl.api.attach_volume(ctxt, worker.host, {'uuid': instance,
                                              'project_id': ctxt.project_id}, vid, '/dev/vdb')
    assert outcome(ctl, ctxt, worker) == 'end'
    ctxt = caller_context(sessions['demo'])
    ctl.api.detach_volume(ctxt, worker.host, {'uuid': instance}, vid,
                          attachment_id=str(uuid.uuid4()))
    assert outcome(ctl, ctxt, worker) == 'error'
    assert admin_cinder.volumes.get(vid).status == 'in-use'


def test_a_tokenless_cast_is_refused_for_another_projects_volume(
        make_worker, controller, volumes, sessions, admin_cinder):
    worker = make_worker()
    ctl = controller(worker)
    (alt_vid,) = volumes.make(user='alt_demo')
    (demo_vid,) = volumes.make()
    demo_project = caller_context(sessions['demo']).project_id
    alt_project = caller_context(sessions['alt_demo']).project_id

    # no token, an instance of demo's project, alt_demo's volume: refused untouched
    for instance in ({'uuid': str(uuid.uuid4()), 'project_id': demo_project},
                     {'uuid': str(uuid.uuid4())}):
        ctxt = aw_context.RequestContext()
        ctl.api.attach_volume(ctxt, worker.host, instance, alt_vid, '/dev/vdb')
        assert outcome(ctl, ctxt, worker) == 'error'
        assert ctl.fault(ctxt.request_id)['exception'] == 'NotTrusted'
        assert admin_cinder.volumes.get(alt_vid).status == 'available'

    # no token, an instance of the volume's own project: attached with the service
    # credentials
    for vid, project in ((demo_vid, demo_project), (alt_vid, alt_project)):
        ctxt = aw_context.RequestContext()
        ctl.api.attach_volume(ctxt, worker.host, {'uuid': str(uuid.uuid4()),
                                                  'project_id': project}, vid, '/dev/vdb')
        assert outcome(ctl, ctxt, worker) == 'end', ctl.fault(ctxt.request_id)
        assert admin_cinder.volumes.get(vid).status == 'in-use'

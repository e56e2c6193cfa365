"""kill -9 at every step boundary of three more paths, against the real Cinder:
a controller-made attachment, a duplicate cast of a completed attach, and detach.

As in test_crash_recovery: the worker kills itself right after journalling the
boundary (ATTACHWORKER_TEST_CRASH_AT), and again as a power cut would, losing the
boundary's record (<step>:<state>:lost); the next start recovers it. Afterwards every
cast has exactly one terminal notification and Cinder agrees with it; no volume is
stuck, no live attachment was deleted.
"""
import time
import uuid

import pytest

from tests.integration.conftest import caller_context
from tests.integration.conftest import cinder_for

STUCK = {'reserved', 'attaching', 'error_attaching', 'detaching'}
CONTROLLER_STEPS = ['cinder_client', 'check_reservation', 'get_volume', 'check_attach',
                    'connector', 'reserve_device', 'attachment_update', 'driver_attach',
                    'attachment_complete']
DUPLICATE_STEPS = ['cinder_client', 'check_reservation', 'get_volume']
DETACH_STEPS = {'attachments': ['cinder_client', 'get_volume', 'connector', 'driver_detach',
                                'attachment_delete'],
                'legacy': ['cinder_client', 'get_volume', 'connector', 'begin_detaching',
                           'driver_detach', 'terminate_connection', 'detach']}


def boundaries(steps):
    return ['%s:%s' % (step, state) for step in steps for state in ('started', 'done')]


def run_matrix(worker, ctl, casts_for, boundary_list):
    """Cast one per boundary, each to a worker that dies there; returns the outcomes."""
    casts = {}
    t0 = time.monotonic()
    for boundary in boundary_list:
        worker.start(env={'ATTACHWORKER_TEST_CRASH_AT': boundary})
        request_id, info = casts_for(boundary)
        casts[request_id] = (boundary, info)
        assert worker.proc.wait(60) == -9, 'did not die at %s' % boundary
    worker.start()  # recovers the last one
    seen = ctl.outcomes(list(casts), timeout=120)
    worker.stop()
    return casts, seen, time.monotonic() - t0


def terminal(seen, request_id):
    return [e for e in seen.get(request_id, []) if e.endswith(('.end', '.error'))]


@pytest.mark.slow
def test_kill_9_with_a_controller_made_attachment(make_worker, controller, volumes,
                                                   sessions, admin_cinder):
    worker = make_worker()
    ctl = controller(worker)
    worker.stop()
    points = boundaries(CONTROLLER_STEPS)
    points += [point + ':lost' for point in points]  # a power cut loses the record
    ids = iter(volumes.make(len(points)))
    demo = cinder_for(sessions['demo'])

    def cast(boundary):
        volume_id, instance = next(ids), str(uuid.uuid4())
        reservation = demo.attachments.create(volume_id, None, instance)
        ctxt = caller_context(sessions['demo'])
        ctl.api.attach_volume(ctxt, worker.host, {'uuid': instance,
                                                  'project_id': ctxt.project_id},
                              volume_id, attachment_id=reservation['id'])
        return ctxt.request_id, (volume_id, reservation['id'])
    casts, seen, elapsed = run_matrix(worker, ctl, cast, points)
    problems = []
    for request_id, (boundary, (volume_id, _)) in casts.items():
        status = admin_cinder.volumes.get(volume_id).status
        expected = ['instance.volume_attach.end' if boundary == 'attachment_complete:done'
                    else 'instance.volume_attach.error']
        want_status = 'in-use' if boundary == 'attachment_complete:done' else 'available'
        if terminal(seen, request_id) != expected or status != want_status:
            problems.append((boundary, terminal(seen, request_id), status))
    print('kill -9 (controller attachment): %d kills in %.0f s; %d problems'
          % (len(points), elapsed, len(problems)))
    assert not problems, problems


@pytest.mark.slow
def test_kill_9_during_a_duplicate_cast_keeps_the_live_attachment(make_worker, controller,
                                                                  volumes, sessions,
                                                                  admin_cinder):
    worker = make_worker()
    ctl = controller(worker)
    points = boundaries(DUPLICATE_STEPS)
    points += [point + ':lost' for point in points]  # a power cut loses the record
    demo = cinder_for(sessions['demo'])
    live = {}
    for volume_id in volumes.make(len(points)):  # attached for real first
        instance = str(uuid.uuid4())
        reservation = demo.attachments.create(volume_id, None, instance)
        ctxt = caller_context(sessions['demo'])
        ctl.api.attach_volume(ctxt, worker.host, {'uuid': instance,
                                                  'project_id': ctxt.project_id},
                              volume_id, '/dev/vdb', attachment_id=reservation['id'])
        assert terminal(ctl.outcomes([ctxt.request_id]), ctxt.request_id) == [
            'instance.volume_attach.end']
        live[volume_id] = (instance, reservation['id'])
    worker.stop()
    pending = iter(live.items())

    def cast(boundary):
        volume_id, (instance, att_id) = next(pending)
        ctxt = caller_context(sessions['demo'])
        ctl.api.attach_volume(ctxt, worker.host, {'uuid': instance,
                                                  'project_id': ctxt.project_id},
                              volume_id, '/dev/vdb', attachment_id=att_id)
        return ctxt.request_id, (volume_id, att_id)
    casts, seen, elapsed = run_matrix(worker, ctl, cast, points)
    problems = []
    for request_id, (boundary, (volume_id, att_id)) in casts.items():
        volume = admin_cinder.volumes.get(volume_id)
        kept = [a['attachment_id'] for a in volume.attachments] == [att_id]
        if len(terminal(seen, request_id)) != 1 or volume.status != 'in-use' or not kept:
            problems.append((boundary, terminal(seen, request_id), volume.status,
                             volume.attachments))
    print('kill -9 (duplicate cast): %d kills in %.0f s; %d live attachments lost'
          % (len(points), elapsed, len(problems)))
    assert not problems, problems


@pytest.mark.slow
@pytest.mark.parametrize('flow', sorted(DETACH_STEPS))
def test_kill_9_during_detach(flow, make_worker, controller, volumes, sessions,
                              admin_cinder):
    worker = make_worker(cinder__attach_flow=flow)
    ctl = controller(worker)
    points = boundaries(DETACH_STEPS[flow])
    points += [point + ':lost' for point in points]  # a power cut before its fsync
    attached = []
    for volume_id in volumes.make(len(points)):
        instance = str(uuid.uuid4())
        ctxt = caller_context(sessions['demo'])
        ctl.api.attach_volume(ctxt, worker.host, {'uuid': instance,
                                                  'project_id': ctxt.project_id},
                              volume_id, '/dev/vdb')
        assert terminal(ctl.outcomes([ctxt.request_id]), ctxt.request_id) == [
            'instance.volume_attach.end']
        attached.append((volume_id, instance))
    worker.stop()
    pending = iter(attached)

    def cast(boundary):
        volume_id, instance = next(pending)
        ctxt = caller_context(sessions['demo'])
        ctl.api.detach_volume(ctxt, worker.host, {'uuid': instance}, volume_id)
        return ctxt.request_id, volume_id
    casts, seen, elapsed = run_matrix(worker, ctl, cast, points)
    steps = DETACH_STEPS[flow]
    host_from = steps.index('driver_detach')
    problems = []
    for request_id, (boundary, volume_id) in casts.items():
        step, state = boundary.split(':')[:2]
        # once the host may have let go, the detach is finished; before, rolled back.
        # A start lost in a power cut is taken as never begun: for a start that waits
        # (driver_detach's arms the finish) it did not; one that does not wait is lost
        # after its step acted, and either way recovery goes by the record before it
        began = not (state == 'started' and boundary.endswith(':lost'))
        finished = steps.index(step) + (0 if began else -1) >= host_from
        expected = ['instance.volume_detach.%s' % ('end' if finished else 'error')]
        status = admin_cinder.volumes.get(volume_id).status
        want = 'available' if finished else 'in-use'
        if terminal(seen, request_id) != expected or status != want:
            problems.append((boundary, terminal(seen, request_id), status))
    print('kill -9 (detach, %s flow): %d kills in %.0f s; %d problems'
          % (flow, len(points), elapsed, len(problems)))
    assert not problems, problems

"""Kill -9 at every step boundary of both flows, then restart: nothing stuck.

The worker kills itself with SIGKILL right after journalling a step state when
ATTACHWORKER_TEST_CRASH_AT=<step>:<started|done> is set (a test-only hook), or, with
<step>:<state>:lost, just before that record's fsync, as a power cut would: the
record and the rest of its open batch are lost (a step's end: the step acted). Each
worker process first recovers what the previous one left, then takes the next
cast and dies at the next boundary. Afterwards: no volume is reserved, attaching
or error_attaching, and every cast has exactly one terminal notification.
"""
import time
import uuid

import pytest

from tests.integration.conftest import caller_context

STEPS = {
    'attachments': ['cinder_client', 'get_volume', 'check_attach', 'connector',
                    'reserve_device', 'attachment_create', 'attachment_update',
                    'driver_attach', 'attachment_complete'],
    'legacy': ['cinder_client', 'get_volume', 'check_attach', 'connector', 'reserve_device',
               'reserve', 'initialize_connection', 'driver_attach', 'attach'],
}
REPEAT = 2
STUCK = {'reserved', 'attaching', 'error_attaching', 'detaching'}


@pytest.mark.slow
@pytest.mark.parametrize('flow', sorted(STEPS))
def test_kill_9_at_every_step_boundary(flow, make_worker, controller, volumes, sessions,
                                       admin_cinder):
    boundaries = ['%s:%s' % (step, state) for step in STEPS[flow]
                  for state in ('started', 'done')] * REPEAT
    boundaries += ['%s:%s:lost' % (step, state) for step in STEPS[flow]
                   for state in ('started', 'done')]
    worker = make_worker(cinder__attach_flow=flow)
    ctl = controller(worker)
    worker.stop()
    ids = volumes.make(len(boundaries))
    casts = {}
    t0 = time.monotonic()
    for boundary, volume_id in zip(boundaries, ids, strict=True):
        worker.start(env={'ATTACHWORKER_TEST_CRASH_AT': boundary})
        ctxt = caller_context(sessions['demo'])
        ctl.api.attach_volume(ctxt, worker.host, {'uuid': str(uuid.uuid4()),
                                                  'project_id': ctxt.project_id}, volume_id)
        casts[ctxt.request_id] = (boundary, volume_id)
        assert worker.proc.wait(60) == -9, 'did not die at %s' % boundary
    worker.start()  # recovers the last one
    seen = ctl.outcomes(list(casts), timeout=120)
    worker.stop()
    elapsed = time.monotonic() - t0

    final = STEPS[flow][-1] + ':done'
    problems = []
    for request_id, (boundary, volume_id) in casts.items():
        terminal = [e for e in seen.get(request_id, []) if e.endswith(('.end', '.error'))]
        status = admin_cinder.volumes.get(volume_id).status
        expected = 'instance.volume_attach.end' if boundary == final else \
            'instance.volume_attach.error'
        if terminal != [expected] or status in STUCK:
            problems.append((boundary, terminal, status))
        elif expected.endswith('.error'):
            fault = ctl.fault(request_id)
            lost = boundary.endswith(':lost') and 'step %s (%s)' % tuple(
                boundary.split(':')[:2]) in fault['message']  # then it was not lost
            if fault['step'] != 'recovery' or status != 'available' or lost:
                problems.append((boundary, fault, status))
    print('kill -9 (%s flow): %d kills at %d boundaries in %.0f s; %d problems'
          % (flow, len(boundaries), len(set(boundaries)), elapsed, len(problems)))
    assert not problems, problems

"""extend_volume (RPC 1.3) against the real Keystone + Cinder, and with the libvirt
driver on the real Ceph + libvirt/QEMU stack.

What Nova does on Cinder's ``volume-extended`` external event: the user extends an
attached volume in Cinder (microversion 3.42 or later), the controller casts
``extend_volume``, the host reads the size back from Cinder and grows the disk.
Cinder of the local cloud tries to tell Nova itself and cannot (there is no
compute endpoint): the extend is done anyway, and Cinder keeps a user message
saying the compute service failed. Judged by what Cinder, the driver's record,
libvirt, QEMU and Ceph report.
"""
import json
import time
import uuid

from cinderclient import exceptions as cinder_exc
import pytest

from tests import harness
from tests.integration.conftest import caller_context
from tests.integration.conftest import cinder_for
from tests.integration.test_attach import attach
from tests.integration.test_libvirt_rbd import cast
from tests.integration.test_libvirt_rbd import ceph_volumes
from tests.integration.test_libvirt_rbd import disks
from tests.integration.test_libvirt_rbd import guest  # noqa: F401 - a fixture
from tests.integration.test_libvirt_rbd import libvirt_worker
from tests.integration.test_libvirt_rbd import qemu_io
from tests.integration.test_libvirt_rbd import stack  # noqa: F401 - a fixture
from tests.integration.test_storage_stack import Pool
from tests.integration.test_storage_stack import storage as _storage  # noqa: F401
from tests.integration.test_storage_stack import virsh

GiB = 1024 ** 3
#: Cinder extends an in-use volume only from this microversion on (VOLUME_EXTEND_INUSE).
EXTEND_INUSE = '3.42'
#: Cinder's user message when its volume-extended event could not reach Nova.
NOVA_NOT_TOLD = 'VOLUME_VOLUME_007_009'


def cinder_extend(sessions, admin_cinder, volume_id, new_size, timeout=60):
    """Extend the in-use volume as its owner; Cinder's view once it is done."""
    t0 = time.monotonic()
    cinder_for(sessions['demo'], EXTEND_INUSE).volumes.extend(volume_id, new_size)
    deadline = time.monotonic() + timeout
    while True:
        volume = admin_cinder.volumes.get(volume_id)
        if volume.status != 'extending' and volume.size == new_size:
            return volume, time.monotonic() - t0
        assert volume.status not in ('error_extending', 'error'), volume.status
        assert time.monotonic() < deadline, (volume.status, volume.size)
        time.sleep(0.2)


def cast_extend(ctl, worker, ctxt, instance_uuid, volume_id, new_size=None, timeout=60):
    """The outcome event ('end'/'error') and the payload of its notification."""
    ctl.api.extend_volume(ctxt, worker.host, {'uuid': instance_uuid,
                                              'project_id': ctxt.project_id},
                          volume_id, new_size)
    events = ctl.outcomes([ctxt.request_id], timeout).get(ctxt.request_id, [])
    assert events and events[-1].endswith(('.end', '.error')), (events,
                                                              worker.logs()[-3000:])
    assert events[0] == 'instance.volume_extend.start', events
    note = ctl.notes(ctxt.request_id)[-1]
    return events[-1].rsplit('.', 1)[1], note['payload']['attachworker_object.data']


def fake_record(worker, instance_uuid, volume_id):
    return harness.fake_virt_record(worker.state, instance_uuid)['attachments'][volume_id]


def test_extend_attached_volume(make_worker, controller, volumes, sessions, admin_cinder):
    """tempest's test_extend_attached_volume, with the worker as the compute host."""
    worker = make_worker()
    ctl = controller(worker)
    (vid,) = volumes.make()
    result, instance_uuid = attach(ctl, worker, caller_context(sessions['demo']), vid)
    assert result == 'end'

    # below 3.42 Cinder extends only available volumes: refused, nothing changes
    with pytest.raises(cinder_exc.BadRequest) as refused:
        cinder_for(sessions['demo'], '3.41').volumes.extend(vid, 2)
    assert "must be '{'status': 'available'}' to extend, currently in-use" in str(
        refused.value)
    assert (admin_cinder.volumes.get(vid).size, admin_cinder.volumes.get(vid).status) == (
        1, 'in-use')

    volume, extend_s = cinder_extend(sessions, admin_cinder, vid, 2)
    assert volume.status == 'in-use' and volume.attachments[0]['server_id'] == instance_uuid
    # Cinder could not tell Nova (no compute endpoint here), and says so; the extend held
    # (Cinder saves the new size before it tries Nova: the message may come a bit later)
    deadline = time.monotonic() + 30
    while True:
        messages = cinder_for(sessions['demo'], '3.3').messages.list()
        told = {m.event_id for m in messages if m.resource_uuid == vid}
        if NOVA_NOT_TOLD in told or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert NOVA_NOT_TOLD in told

    # the controller's cast; its new_size is advisory, and wrong here on purpose
    ctxt = caller_context(sessions['demo'])
    t0 = time.monotonic()
    result, data = cast_extend(ctl, worker, ctxt, instance_uuid, vid, new_size=5)
    cast_s = time.monotonic() - t0
    assert result == 'end', data
    assert (data['new_size'], data['old_size']) == (2, None)  # Cinder's size, not the cast's
    assert data['attachment_id'] == volume.attachments[0]['attachment_id']
    assert fake_record(worker, instance_uuid, vid)['size_bytes'] == 2 * GiB
    assert 'The cast says volume %s is 5 GiB, Cinder says 2 GiB' % vid in worker.logs()

    # again: the host knows what it had
    cinder_extend(sessions, admin_cinder, vid, 3)
    result, data = cast_extend(ctl, worker, caller_context(sessions['demo']), instance_uuid,
                               vid)
    assert (result, data['new_size'], data['old_size']) == ('end', 3, 2)
    assert fake_record(worker, instance_uuid, vid)['size_bytes'] == 3 * GiB

    # an instance this volume is not attached to: refused, Cinder and the host unchanged
    other = str(uuid.uuid4())
    result, data = cast_extend(ctl, worker, caller_context(sessions['demo']), other, vid)
    assert result == 'error'
    assert (data['fault']['step'], data['fault']['exception']) == ('check_extend',
                                                                   'VolumeNotExtendable')
    after = admin_cinder.volumes.get(vid)
    assert (after.status, after.size, after.attachments[0]['server_id']) == (
        'in-use', 3, instance_uuid)
    assert fake_record(worker, instance_uuid, vid)['size_bytes'] == 3 * GiB
    print('extend of an attached volume: Cinder %.2f s, cast to outcome %.2f s'
          % (extend_s, cast_s))


def capacity(storage, name, target):
    """The disk's capacity as libvirt has it from QEMU (``virsh domblkinfo``)."""
    out = virsh(storage, 'domblkinfo', name, target).stdout
    return int(next(line.split()[1] for line in out.splitlines()
                    if line.startswith('Capacity:')))


def qemu_size(storage, name, alias):
    """The disk's virtual size as QEMU itself reports it (QMP ``query-block``)."""
    out = virsh(storage, 'qemu-monitor-command', name,
                json.dumps({'execute': 'query-block'}))
    for block in json.loads(out.stdout)['return']:
        if alias in (block.get('qdev') or '') and block.get('inserted'):
            return block['inserted']['image']['virtual-size']
    raise AssertionError('no block device %s in %s' % (alias, out.stdout[:2000]))


def test_extend_attached_volume_grows_the_disk_of_a_running_guest(
        make_worker, controller, volumes, sessions, admin_cinder, stack, guest):  # noqa: F811
    """Cinder's RBD driver resizes the image; QEMU keeps the size it opened it with
    until the worker's blockResize; then the guest's disk is the new size, and bytes
    written past the old end reach Ceph."""
    worker = libvirt_worker(make_worker, stack)
    ctl = controller(worker)
    (vid,) = ceph_volumes(volumes, sessions)
    assert cast(ctl, worker, 'attach', caller_context(sessions['demo']), guest['uuid'],
                vid) == 'end', worker.logs()[-3000:]
    target, alias, source = disks(stack, guest['name'])[vid]
    assert capacity(stack, guest['name'], target) == GiB

    cinder_extend(sessions, admin_cinder, vid, 2)
    pool = Pool(stack)
    try:
        image = pool.image(source.split('/', 1)[1])
        try:
            assert image.size() == 2 * GiB  # Ceph has it...
        finally:
            image.close()
        # ...the guest does not, until the host is told
        assert capacity(stack, guest['name'], target) == GiB
        assert qemu_size(stack, guest['name'], alias) == GiB

        ctxt = caller_context(sessions['demo'])
        t0 = time.monotonic()
        result, data = cast_extend(ctl, worker, ctxt, guest['uuid'], vid, new_size=2)
        cast_s = time.monotonic() - t0
        assert result == 'end', (data, worker.logs()[-3000:])
        assert (data['new_size'], data['old_size'], data['mountpoint']) == (
            2, 1, '/dev/' + target)
        assert capacity(stack, guest['name'], target) == 2 * GiB
        assert qemu_size(stack, guest['name'], alias) == 2 * GiB

        # the guest's disk really is larger: a write beyond the old end reaches the image
        offset = GiB + 512 * 1024 * 1024
        qemu_io(stack, guest['name'], alias, 'write -P 0x6b %d 4096' % offset)
        image = pool.image(source.split('/', 1)[1])
        try:
            assert image.read(offset, 4096) == b'\x6b' * 4096
        finally:
            image.close()
    finally:
        pool.close()
    volume = admin_cinder.volumes.get(vid)
    assert (volume.status, volume.size) == ('in-use', 2)
    # the same cast again changes nothing
    result, data = cast_extend(ctl, worker, caller_context(sessions['demo']), guest['uuid'],
                               vid)
    assert (result, data['old_size']) == ('end', 2)
    assert 'has %d bytes already' % (2 * GiB) in worker.logs()
    print('libvirt + rbd: extend cast to outcome %.2f s; guest disk %s 1 -> 2 GiB'
          % (cast_s, target))


EXTEND_STEPS = ['check_driver', 'cinder_client', 'get_volume', 'check_extend', 'driver_extend']


def test_kill_9_at_every_step_boundary_of_extend(make_worker, controller, volumes, sessions,
                                                 admin_cinder):
    """Recovery ends each killed extend with one outcome and runs nothing again: .end
    once the driver step is journalled done, else .error (fault step recovery) with
    the host's disk as the kill left it. Cinder's extend is never touched."""
    boundaries = ['%s:%s' % (step, state) for step in EXTEND_STEPS
                  for state in ('started', 'done')]
    worker = make_worker()
    ctl = controller(worker)
    ids = volumes.make(len(boundaries))
    instances = {}
    for volume_id in ids:
        result, instances[volume_id] = attach(ctl, worker, caller_context(sessions['demo']),
                                              volume_id)
        assert result == 'end'
        cinder_extend(sessions, admin_cinder, volume_id, 2)
    worker.stop()
    casts = {}
    t0 = time.monotonic()
    for boundary, volume_id in zip(boundaries, ids, strict=True):
        worker.start(env={'ATTACHWORKER_TEST_CRASH_AT': boundary})
        ctxt = caller_context(sessions['demo'])
        ctl.api.extend_volume(ctxt, worker.host, {'uuid': instances[volume_id],
                                                  'project_id': ctxt.project_id}, volume_id)
        casts[ctxt.request_id] = (boundary, volume_id)
        assert worker.proc.wait(60) == -9, 'did not die at %s' % boundary
    worker.start()  # recovers the last one
    seen = ctl.outcomes(list(casts), timeout=120)
    elapsed = time.monotonic() - t0
    problems = []
    for request_id, (boundary, volume_id) in casts.items():
        terminal = [e for e in seen.get(request_id, []) if e.endswith(('.end', '.error'))]
        done = boundary == 'driver_extend:done'
        size = fake_record(worker, instances[volume_id], volume_id).get('size_bytes')
        volume = admin_cinder.volumes.get(volume_id)
        if (terminal != ['instance.volume_extend.%s' % ('end' if done else 'error')]
                or size != (2 * GiB if done else None)
                or (volume.status, volume.size) != ('in-use', 2)):
            problems.append((boundary, terminal, size, volume.status, volume.size))
        elif not done and ctl.fault(request_id)['step'] != 'recovery':
            problems.append((boundary, ctl.fault(request_id)))
    print('kill -9 during extend: %d kills in %.0f s; %d problems'
          % (len(boundaries), elapsed, len(problems)))
    assert not problems, problems

"""The libvirt driver against the real thing: Cinder volumes of type ``ceph`` (Cinder's
RBD driver on the single-node Ceph of tools/storage-stack) cast-attached by the worker
to a running QEMU guest of the stack's libvirtd.

Judged by what libvirt, Ceph and Cinder report: the guest's live and persistent XML,
bytes written through the guest's disk read back from the RBD image, Cinder's volume
status. Skipped (with the reason) when the stack is not up.
"""
import subprocess
import time
import uuid

import pytest

from tests.integration.conftest import caller_context
from tests.integration.conftest import cinder_for
from tests.integration.test_storage_stack import STACK
from tests.integration.test_storage_stack import Pool
from tests.integration.test_storage_stack import storage as _storage  # noqa: F401
from tests.integration.test_storage_stack import virsh

PATTERN = 0x5a
STUCK = {'reserved', 'attaching', 'error_attaching', 'detaching'}


@pytest.fixture(scope='module')
def stack(_storage):  # noqa: F811 - the fixture of test_storage_stack (skips when down)
    return _storage


@pytest.fixture
def guest(stack):
    """A running, persistent QEMU guest (no OS) whose UUID is the instance uuid."""
    name = 'aw-it-%s' % uuid.uuid4().hex[:8]
    instance_uuid = str(uuid.uuid4())
    subprocess.run([str(STACK), 'guest', 'create', name, '--uuid', instance_uuid],
                   check=True, capture_output=True, text=True, timeout=120)
    # made persistent, so that its definition (AFFECT_CONFIG) can be checked too
    xml = virsh(stack, 'dumpxml', '--inactive', name).stdout
    subprocess.run(['virsh', '-q', '-c', stack['libvirt_uri'], 'define', '/dev/stdin'],
                   input=xml, check=True, capture_output=True, text=True, timeout=60)
    yield {'name': name, 'uuid': instance_uuid}
    subprocess.run([str(STACK), 'guest', 'remove', name], capture_output=True, timeout=120)


@pytest.fixture
def pool(stack):
    p = Pool(stack)
    yield p
    p.close()


def ceph_volumes(volumes, sessions, count=1):
    c = cinder_for(sessions['demo'])
    ids = []
    for _ in range(count):
        ids.append(c.volumes.create(1, name='it-rbd-%s' % uuid.uuid4().hex[:6],
                                    volume_type='ceph').id)
        volumes.created.append(ids[-1])
    volumes.wait_available(ids)
    return ids


def libvirt_worker(make_worker, stack, **options):
    return make_worker(virt__driver='libvirt',
                       libvirt__connection_uri=stack['libvirt_uri'],
                       libvirt__device_detach_timeout=options.pop('timeout', 10),
                       libvirt__device_detach_attempts=options.pop('attempts', 3),
                       **options)


def disks(stack, name, inactive=False):
    """{serial: (target dev, alias, source name)} of the guest's disks."""
    import xml.etree.ElementTree as ET
    args = ['dumpxml'] + (['--inactive'] if inactive else []) + [name]
    root = ET.fromstring(virsh(stack, *args).stdout)
    found = {}
    for disk in root.iter('disk'):
        serial = disk.findtext('serial')
        if serial:
            source = disk.find('source')
            alias = disk.find('alias')
            found[serial] = (disk.find('target').get('dev'),
                             alias.get('name') if alias is not None else None,
                             source.get('name') if source is not None else None)
    return found


def cast(ctl, worker, method, ctxt, instance_uuid, volume_id, timeout=120):
    instance = {'uuid': instance_uuid, 'project_id': ctxt.project_id}
    if method == 'attach':
        ctl.api.attach_volume(ctxt, worker.host, instance, volume_id, None)
    else:
        ctl.api.detach_volume(ctxt, worker.host, instance, volume_id)
    seen = ctl.outcomes([ctxt.request_id], timeout)
    events = seen.get(ctxt.request_id, [])
    assert events and events[-1].endswith(('.end', '.error')), (events,
                                                              worker.logs()[-3000:])
    return events[-1].rsplit('.', 1)[1]


def qemu_io(stack, name, device_id, command):
    """An HMP ``qemu-io`` on the guest's drive (its output goes to QEMU's log)."""
    return virsh(stack, 'qemu-monitor-command', name, '--hmp',
                 'qemu-io -d %s "%s"' % (device_id, command))


def test_an_rbd_volume_reaches_the_guest_and_its_bytes_reach_ceph(
        make_worker, controller, volumes, sessions, admin_cinder, stack, guest, pool):
    worker = libvirt_worker(make_worker, stack)
    ctl = controller(worker)
    (vid,) = ceph_volumes(volumes, sessions)
    t0 = time.monotonic()
    assert cast(ctl, worker, 'attach', caller_context(sessions['demo']), guest['uuid'],
                vid) == 'end', worker.logs()[-3000:]
    attach_s = time.monotonic() - t0

    live = disks(stack, guest['name'])
    assert vid in live, live
    dev, alias, source = live[vid]
    assert source == '%s/volume-%s' % (stack['ceph_pool'], vid)
    assert dev.startswith('sd')  # virtio-scsi: what unplugs without a guest OS
    assert vid in disks(stack, guest['name'], inactive=True)  # persistent too
    volume = admin_cinder.volumes.get(vid)
    assert volume.status == 'in-use'
    assert volume.attachments[0]['server_id'] == guest['uuid']

    # bytes written by QEMU through the guest's disk are in the RBD image
    qemu_io(stack, guest['name'], alias, 'write -P 0x%x 0 4096' % PATTERN)
    image = pool.image('volume-%s' % vid)
    try:
        assert image.read(0, 4096) == bytes([PATTERN]) * 4096
    finally:
        image.close()

    t0 = time.monotonic()
    assert cast(ctl, worker, 'detach', caller_context(sessions['demo']), guest['uuid'],
                vid) == 'end'
    detach_s = time.monotonic() - t0
    assert vid not in disks(stack, guest['name'])
    assert vid not in disks(stack, guest['name'], inactive=True)
    assert admin_cinder.volumes.get(vid).status == 'available'
    print('libvirt + rbd: cast attach %.2f s, cast detach %.2f s (outcome seen)'
          % (attach_s, detach_s))

    # no Ceph key anywhere the worker writes or the guest's definition shows
    key = key_of(stack)
    worker.stop()
    for label, text in (('live XML', virsh(stack, 'dumpxml', guest['name']).stdout),
                        ('persistent XML', virsh(stack, 'dumpxml', '--inactive',
                                                 guest['name']).stdout),
                        ('worker log', worker.logs()),
                        ('journal', journal_text(worker)),
                        ('notifications', repr(ctl.watcher.events()))):
        assert key not in text, label


def key_of(stack):
    for line in open(stack['ceph_keyring']):
        if line.strip().startswith('key'):
            return line.split('=', 1)[1].strip()
    raise AssertionError('no key in %s' % stack['ceph_keyring'])


def journal_text(worker):
    return ''.join(p.read_bytes().decode('utf-8', 'replace')
                   for p in worker.state.rglob('*') if p.is_file())


def test_kill_9_between_driver_attach_and_complete_leaves_guest_and_cinder_agreeing(
        make_worker, controller, volumes, sessions, admin_cinder, stack, guest):
    worker = libvirt_worker(make_worker, stack)
    ctl = controller(worker)
    worker.stop()
    (vid,) = ceph_volumes(volumes, sessions)
    worker.start(env={'ATTACHWORKER_TEST_CRASH_AT': 'driver_attach:done'})
    ctxt = caller_context(sessions['demo'])
    ctl.api.attach_volume(ctxt, worker.host, {'uuid': guest['uuid'],
                                              'project_id': ctxt.project_id}, vid, None)
    assert worker.proc.wait(60) == -9
    assert vid in disks(stack, guest['name'])  # the guest had it when the worker died
    worker.start()  # recovery
    seen = ctl.outcomes([ctxt.request_id], 120)
    terminal = [e for e in seen.get(ctxt.request_id, []) if e.endswith(('.end', '.error'))]
    assert len(terminal) == 1, seen
    status = admin_cinder.volumes.get(vid).status
    in_guest = vid in disks(stack, guest['name'])
    assert status not in STUCK
    # both attached or both detached, and the outcome says which
    assert (status == 'in-use') == in_guest, (status, in_guest)
    assert terminal[0].endswith('.end') == in_guest
    print('kill -9 after driver_attach: recovery left the volume %s, %s the guest (%s)'
          % (status, 'in' if in_guest else 'not in', terminal[0]))


def test_a_detach_the_guest_never_completes_is_an_error_and_the_volume_stays_in_use(
        make_worker, controller, volumes, sessions, admin_cinder, stack, guest):
    # virtio-blk unplug needs the guest OS to agree (ACPI); this guest runs none, so
    # it never lets go: what a hung or hostile guest does
    worker = libvirt_worker(make_worker, stack, libvirt__disk_bus='virtio', timeout=2,
                            attempts=2)
    ctl = controller(worker)
    (vid,) = ceph_volumes(volumes, sessions)
    assert cast(ctl, worker, 'attach', caller_context(sessions['demo']), guest['uuid'],
                vid) == 'end'
    assert disks(stack, guest['name'])[vid][0].startswith('vd')
    ctxt = caller_context(sessions['demo'])
    t0 = time.monotonic()
    assert cast(ctl, worker, 'detach', ctxt, guest['uuid'], vid) == 'error'
    waited = time.monotonic() - t0
    fault = ctl.fault(ctxt.request_id)
    assert fault['step'] == 'driver_detach', fault
    assert vid in disks(stack, guest['name'])  # still in the guest...
    volume = admin_cinder.volumes.get(vid)
    assert volume.status == 'in-use', volume.status  # ...so never 'available'
    assert volume.attachments and volume.attachments[0]['server_id'] == guest['uuid']
    print('a detach the guest ignores: .error after %.1f s (%s), volume in-use'
          % (waited, fault['exception']))

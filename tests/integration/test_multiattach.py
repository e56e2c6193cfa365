"""Multiattach volumes through the worker, against the real Keystone + Cinder (issue 11,
item 2), and on the real Ceph + libvirt/QEMU of tools/storage-stack.

A multiattach volume is one of a volume type with ``multiattach="<is> True"``
(tools/cloud/cloudctl.py multiattach-types; ``Volumes.create(multiattach=True)`` picks
the one Cinder can place). Cinder lets such a volume be reserved while ``in-use``, keeps
one attachment per instance, and stays ``in-use`` until the last one is deleted. Each
case is judged by what Cinder reports (the volume's status and attachments, its
attachment records) and by the virt driver's records. A non-multiattach volume
already in use is refused for a second instance:
test_attach.py::test_volume_in_use_elsewhere_is_refused_and_cinder_unchanged. The
libvirt driver's shared host connection (os-brick, disconnected only when no domain
has the volume: nova bug 2048837) is unit-tested in tests/unit/virt/test_libvirt_detach.py.
"""
import json
import re
import subprocess
import time
import uuid
from xml.etree import ElementTree as ET

from tests import harness
from tests.integration.conftest import caller_context
from tests.integration.fault_proxy import FaultProxy
from tests.integration.test_libvirt_rbd import cast
from tests.integration.test_libvirt_rbd import libvirt_worker
from tests.integration.test_libvirt_rbd import qemu_io
from tests.integration.test_libvirt_rbd import stack  # noqa: F401 - a fixture
from tests.integration.test_storage_stack import STACK
from tests.integration.test_storage_stack import Pool
from tests.integration.test_storage_stack import storage as _storage  # noqa: F401
from tests.integration.test_storage_stack import virsh
from tests.integration.test_storage_stack import wait

RBD_TYPE = 'multiattach-ceph'
RECORDS_NS = '{https://attachworker.example/xmlns/volumes/1}volumes'


def on_host(worker, instance_uuid):
    """The fake virt driver's records of the instance: {volume id: record}."""
    return harness.fake_virt_record(worker.state, instance_uuid).get('attachments', {})


def cinder_says(admin_cinder, volume_id):
    """(status, {server: volume attachment}, {instance: attachment record status})."""
    volume = admin_cinder.volumes.get(volume_id)
    records = admin_cinder.attachments.list(search_opts={'volume_id': volume_id,
                                                         'all_tenants': 1})
    return (volume.status, {a['server_id']: a for a in volume.attachments},
            {r.instance: r.status for r in records})


def test_one_volume_on_two_instances_of_one_host(make_worker, controller, volumes,
                                                 sessions, admin_cinder):
    worker = make_worker()
    ctl = controller(worker)
    (vid,) = volumes.make(multiattach=True)
    assert admin_cinder.volumes.get(vid).multiattach is True
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    for instance in (first, second):
        assert cast(ctl, worker, 'attach', caller_context(sessions['demo']), instance,
                    vid) == 'end', worker.logs()[-3000:]

    status, attached, records = cinder_says(admin_cinder, vid)
    assert status == 'in-use'
    assert set(attached) == {first, second}
    assert {a['host_name'] for a in attached.values()} == {worker.host}
    assert records == {first: 'attached', second: 'attached'}
    # one attachment per instance, and the host's record of each names its own
    assert len({a['attachment_id'] for a in attached.values()}) == 2
    for instance in (first, second):
        record = on_host(worker, instance)[vid]
        assert record['attachment_id'] == attached[instance]['attachment_id']
        assert record['mountpoint'] == attached[instance]['device'] == '/dev/vdb'

    # detaching one leaves the other attached and the volume in-use
    assert cast(ctl, worker, 'detach', caller_context(sessions['demo']), first, vid) == 'end'
    status, attached, records = cinder_says(admin_cinder, vid)
    assert (status, set(attached), records) == ('in-use', {second}, {second: 'attached'})
    assert vid not in on_host(worker, first) and vid in on_host(worker, second)
    # the last one: available, no attachment left anywhere
    assert cast(ctl, worker, 'detach', caller_context(sessions['demo']), second, vid) == 'end'
    assert cinder_says(admin_cinder, vid) == ('available', {}, {})
    assert on_host(worker, second) == {}


def test_one_volume_on_instances_of_two_hosts(make_worker, controller, volumes, sessions,
                                              admin_cinder):
    """Two workers with different ``host`` values (one exchange, so one controller)."""
    one = make_worker()
    two = make_worker(control_exchange=one.exchange)
    assert one.host != two.host
    ctl = controller(one)
    (vid,) = volumes.make(multiattach=True)
    placed = {one: str(uuid.uuid4()), two: str(uuid.uuid4())}
    for worker, instance in placed.items():
        assert cast(ctl, worker, 'attach', caller_context(sessions['demo']), instance,
                    vid) == 'end', worker.logs()[-3000:]

    status, attached, records = cinder_says(admin_cinder, vid)
    assert status == 'in-use' and set(records.values()) == {'attached'}
    # Cinder has each attachment on the host that made it
    assert {i: a['host_name'] for i, a in attached.items()} == {
        placed[one]: one.host, placed[two]: two.host}
    for worker, instance in placed.items():
        assert on_host(worker, instance)[vid]['attachment_id'] == \
            attached[instance]['attachment_id']

    assert cast(ctl, one, 'detach', caller_context(sessions['demo']), placed[one],
                vid) == 'end'
    status, attached, records = cinder_says(admin_cinder, vid)
    assert (status, list(attached)) == ('in-use', [placed[two]])
    assert attached[placed[two]]['host_name'] == two.host
    assert on_host(one, placed[one]) == {} and vid in on_host(two, placed[two])
    assert cast(ctl, two, 'detach', caller_context(sessions['demo']), placed[two],
                vid) == 'end'
    assert cinder_says(admin_cinder, vid) == ('available', {}, {})


def lock_events(worker, volume_id):
    """[(event, request id)] of the volume's lock, in the order of the worker's log."""
    name = 'volume-%s' % volume_id
    found = []
    for line in worker.logs().splitlines():
        match = re.search(r'\[\S+ (req-[0-9a-f-]+) .*(Acquiring|Acquired|Releasing) lock "%s"'
                          % re.escape(name), line)
        if match:
            found.append((match.group(2), match.group(1)))
    return found


def test_attach_and_detach_of_a_shared_volume_on_one_host_are_serialised(
        make_worker, controller, volumes, sessions, admin_cinder):
    """An attach to one instance and a detach from another: different instance locks,
    one volume lock. The detach is cast once the attach holds the volume lock (two
    instances' casts may start in either order), and Cinder holds the attach's
    attachment_update 2 s (a loopback proxy), so the detach is certainly waiting."""
    with FaultProxy() as proxy:
        worker = make_worker(cinder__endpoint_template=proxy.url + '/v3/%(project_id)s')
        ctl = controller(worker)
        (vid,) = volumes.make(multiattach=True)
        first, second = str(uuid.uuid4()), str(uuid.uuid4())
        assert cast(ctl, worker, 'attach', caller_context(sessions['demo']), first,
                    vid) == 'end'

        attach, detach = caller_context(sessions['demo']), caller_context(sessions['demo'])
        proxy.add('PUT', r'/attachments/[0-9a-f-]{36}$', hang=2,
                  request_id=attach.request_id)
        ctl.api.attach_volume(attach, worker.host, {'uuid': second,
                                                    'project_id': attach.project_id}, vid)
        deadline = time.monotonic() + 30
        while ('Acquired', attach.request_id) not in lock_events(worker, vid):
            assert time.monotonic() < deadline, 'the attach never took the volume lock'
            time.sleep(0.05)
        ctl.api.detach_volume(detach, worker.host, {'uuid': first}, vid)
        seen = ctl.outcomes([attach.request_id, detach.request_id], 60)
    assert seen[attach.request_id][-1] == 'instance.volume_attach.end', seen
    assert seen[detach.request_id][-1] == 'instance.volume_detach.end', seen

    events = [e for e in lock_events(worker, vid)
              if e[1] in (attach.request_id, detach.request_id)]
    held = [e for e in events if e[0] != 'Acquiring']
    # one holder at a time: acquired, released, acquired, released; the attach first
    assert held == [('Acquired', attach.request_id), ('Releasing', attach.request_id),
                    ('Acquired', detach.request_id), ('Releasing', detach.request_id)], events
    # and the detach asked for the lock while the attach held it
    assert events.index(('Acquiring', detach.request_id)) < events.index(
        ('Releasing', attach.request_id)), events

    status, attached, records = cinder_says(admin_cinder, vid)
    assert (status, set(attached), records) == ('in-use', {second}, {second: 'attached'})
    assert on_host(worker, first) == {}
    assert on_host(worker, second)[vid]['attachment_id'] == attached[second]['attachment_id']


def make_guest():
    name = 'aw-it-%s' % uuid.uuid4().hex[:8]
    out = subprocess.run([str(STACK), 'guest', 'create', name, '--uuid', str(uuid.uuid4())],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


def shared_disk(storage, name, volume_id):
    """(alias, <shareable/> present, the driver's record says multiattach) or None."""
    root = ET.fromstring(virsh(storage, 'dumpxml', name).stdout)
    for disk in root.iter('disk'):
        if disk.findtext('serial') == volume_id:
            records = root.find('metadata/' + RECORDS_NS)
            record = next(v for v in records if v.get('id') == volume_id)
            return (disk.find('alias').get('name'), disk.find('shareable') is not None,
                    record.get('multiattach'))
    return None


def read_through(storage, guest, alias, pattern):
    """Does the guest's disk read ``pattern`` at offset 0? (qemu-io in QEMU's log)"""
    log = guest['log']
    offset = len(open(log, 'rb').read())
    qemu_io(storage, guest['name'], alias, 'read -P 0x%x 0 4096' % pattern)
    text = wait(lambda: open(log, 'rb').read()[offset:].decode('utf-8', 'replace')
                if b'bytes at offset 0' in open(log, 'rb').read()[offset:] else None,
                10, 'qemu-io output in %s' % log)
    return 'Pattern verification failed' not in text


def test_a_ceph_volume_shared_by_two_running_guests(make_worker, controller, volumes,
                                                    sessions, admin_cinder,
                                                    stack):  # noqa: F811
    """Cinder's RBD driver reports multiattach and drops the image's exclusive lock;
    the libvirt driver gives both guests a ``<shareable/>`` disk (cache none): bytes one
    guest writes, the other reads; detaching one leaves the other its disk."""
    guests = [make_guest(), make_guest()]
    pool = Pool(stack)
    try:
        worker = libvirt_worker(make_worker, stack)
        ctl = controller(worker)
        (vid,) = volumes.make(volume_type=RBD_TYPE)
        assert admin_cinder.volumes.get(vid).multiattach is True
        image = pool.image('volume-%s' % vid)
        try:
            assert not image.features() & 4  # RBD_FEATURE_EXCLUSIVE_LOCK, by Cinder
        finally:
            image.close()
        for guest in guests:
            assert cast(ctl, worker, 'attach', caller_context(sessions['demo']),
                        guest['uuid'], vid) == 'end', worker.logs()[-3000:]
        status, attached, _ = cinder_says(admin_cinder, vid)
        assert status == 'in-use' and set(attached) == {g['uuid'] for g in guests}
        (alias_a, *shared_a), (alias_b, *shared_b) = (shared_disk(stack, g['name'], vid)
                                                      for g in guests)
        assert shared_a == shared_b == [True, 'true']

        qemu_io(stack, guests[0]['name'], alias_a, 'write -P 0x3c 0 4096')
        assert read_through(stack, guests[1], alias_b, 0x3c)
        assert not read_through(stack, guests[1], alias_b, 0x11)  # the check can fail

        assert cast(ctl, worker, 'detach', caller_context(sessions['demo']),
                    guests[0]['uuid'], vid) == 'end'
        assert shared_disk(stack, guests[0]['name'], vid) is None
        assert shared_disk(stack, guests[1]['name'], vid) is not None
        status, attached, _ = cinder_says(admin_cinder, vid)
        assert (status, list(attached)) == ('in-use', [guests[1]['uuid']])
        # the other guest still writes to the image
        qemu_io(stack, guests[1]['name'], alias_b, 'write -P 0x7e 4096 4096')
        image = pool.image('volume-%s' % vid)
        try:
            assert image.read(0, 8192) == b'\x3c' * 4096 + b'\x7e' * 4096
        finally:
            image.close()
        assert cast(ctl, worker, 'detach', caller_context(sessions['demo']),
                    guests[1]['uuid'], vid) == 'end'
        assert cinder_says(admin_cinder, vid) == ('available', {}, {})
    finally:
        pool.close()
        for guest in guests:
            subprocess.run([str(STACK), 'guest', 'remove', guest['name']],
                           capture_output=True, timeout=120)

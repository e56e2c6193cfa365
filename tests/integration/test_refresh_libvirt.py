"""``volume_attachment refresh`` with the libvirt driver against the real Ceph + Cinder
RBD + libvirt/QEMU stack: refused for a running guest; for a stopped one the disk is
rebuilt in the persistent definition from a new Cinder attachment, and once the guest
starts again QEMU writes through the refreshed disk into the volume's RBD image.
"""

from cinderclient import exceptions as cinder_exc
import pytest

from tests.integration.conftest import caller_context
from tests.integration.test_libvirt_rbd import cast
from tests.integration.test_libvirt_rbd import ceph_volumes
from tests.integration.test_libvirt_rbd import disks
from tests.integration.test_libvirt_rbd import guest  # noqa: F401 - a fixture
from tests.integration.test_libvirt_rbd import libvirt_worker
from tests.integration.test_libvirt_rbd import pool  # noqa: F401 - a fixture
from tests.integration.test_libvirt_rbd import qemu_io
from tests.integration.test_libvirt_rbd import stack  # noqa: F401 - a fixture
from tests.integration.test_refresh import manage
from tests.integration.test_storage_stack import storage as _storage  # noqa: F401
from tests.integration.test_storage_stack import virsh

AFTER = 0x3c


def test_refresh_of_a_stopped_guests_rbd_disk_and_the_guest_writes_through_it(
        make_worker, controller, volumes, sessions, admin_cinder, stack, guest,  # noqa: F811
        pool):  # noqa: F811
    worker = libvirt_worker(make_worker, stack)
    ctl = controller(worker)
    (vid,) = ceph_volumes(volumes, sessions)
    assert cast(ctl, worker, 'attach', caller_context(sessions['demo']), guest['uuid'],
                vid) == 'end', worker.logs()[-3000:]
    [old] = admin_cinder.volumes.get(vid).attachments
    target = disks(stack, guest['name'])[vid][0]

    running = manage(worker, 'refresh', guest['uuid'], vid)
    assert running.returncode == 5, running.stdout + running.stderr
    assert 'must be stopped' in running.stderr
    assert [a['attachment_id'] for a in admin_cinder.volumes.get(vid).attachments] == [
        old['attachment_id']]

    virsh(stack, 'destroy', guest['name'])
    done = manage(worker, 'refresh', guest['uuid'], vid)
    assert done.returncode == 0, done.stdout + done.stderr + worker.logs()[-3000:]
    [new] = admin_cinder.volumes.get(vid).attachments
    assert new['attachment_id'] != old['attachment_id']
    assert admin_cinder.attachments.show(new['attachment_id']).status == 'attached'
    with pytest.raises(cinder_exc.NotFound):
        admin_cinder.attachments.show(old['attachment_id'])
    config = disks(stack, guest['name'], inactive=True)
    assert config[vid][0] == target
    assert config[vid][2] == '%s/volume-%s' % (stack['ceph_pool'], vid)
    show = manage(worker, 'show', guest['uuid'], vid)
    assert show.returncode == 0 and new['attachment_id'] in show.stdout, show.stdout

    virsh(stack, 'start', guest['name'])
    live = disks(stack, guest['name'])
    assert live[vid][0] == target
    qemu_io(stack, guest['name'], live[vid][1], 'write -P 0x%x 4096 4096' % AFTER)
    image = pool.image('volume-%s' % vid)
    try:
        assert image.read(4096, 4096) == bytes([AFTER]) * 4096
    finally:
        image.close()
    assert cast(ctl, worker, 'detach', caller_context(sessions['demo']), guest['uuid'],
                vid) == 'end', worker.logs()[-3000:]
    assert admin_cinder.volumes.get(vid).status == 'available'

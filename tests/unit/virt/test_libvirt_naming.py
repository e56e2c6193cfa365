"""Device names from the guest's own XML, and reservations shared by the host's
threads and processes."""
import multiprocessing
import threading
import time
import uuid

from oslo_config import cfg
import pytest

from attachworker import conf as aw_conf
from attachworker import exception
from attachworker.virt.libvirt import driver as driver_mod
from attachworker.virt.libvirt import host
from attachworker.virt.libvirt import naming
from tests.unit.virt import fake_libvirt
from tests.unit.virt.conftest import INSTANCE
from tests.unit.virt.conftest import INSTANCE_UUID
from tests.unit.virt.conftest import VOL
from tests.unit.virt.conftest import VOL_B
from tests.unit.virt.conftest import VOL_C
from tests.unit.virt.conftest import rbd_info
from tests.unit.virt.conftest import sample

CONFIG = fake_libvirt.FakeLibvirt.VIR_DOMAIN_AFFECT_CONFIG
CDROM_ON_SDB = sample('domain.xml').replace("<target dev='hda' bus='ide'/>",
                                            "<target dev='sdb' bus='sata'/>")


def test_names_follow_the_bus_and_skip_the_guests_disks(driver, conf):
    assert driver.reserve_device_name(INSTANCE_UUID, VOL) == '/dev/sdb'
    conf.set_override('disk_bus', 'virtio', group='libvirt')
    # vda (root) and vdb (ephemeral) are the guest's
    assert driver.reserve_device_name(INSTANCE_UUID, VOL_B) == '/dev/vdc'


def test_names_skip_cdroms_persistent_only_disks_and_reservations(lib, make_driver):
    lib.define(INSTANCE_UUID, CDROM_ON_SDB)                       # sdb: a cdrom
    conn = lib.open('qemu:///system')
    conn.lookupByUUIDString(INSTANCE_UUID).attachDeviceFlags(     # sdc: definition only
        sample('rbd_noauth.xml').replace('sdb', 'sdc'), CONFIG)
    driver = make_driver()
    assert driver.reserve_device_name(INSTANCE_UUID, VOL_B) == '/dev/sdd'
    assert driver.reserve_device_name(INSTANCE_UUID, VOL_C) == '/dev/sde'  # sdd: reserved


def test_names_skip_attached_volumes(driver):
    driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL)
    assert driver.reserve_device_name(INSTANCE_UUID, VOL_B) == '/dev/sdc'


def test_reserving_again_returns_the_same_name(driver):
    first = driver.reserve_device_name(INSTANCE_UUID, VOL)
    assert driver.reserve_device_name(INSTANCE_UUID, VOL) == first
    assert driver.reserve_device_name(INSTANCE_UUID, VOL, '/dev/sdq') == first
    assert len(driver.reservations()) == 1


def test_an_attached_volume_has_its_device_as_name(driver):
    driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdf', VOL)
    assert driver.reserve_device_name(INSTANCE_UUID, VOL) == '/dev/sdf'
    assert driver.reservations() == []


def test_a_requested_device_is_honoured_when_free(driver):
    assert driver.reserve_device_name(INSTANCE_UUID, VOL, '/dev/sdk') == '/dev/sdk'
    for taken in ('/dev/sdk', '/dev/vda', '/dev/hda'):
        with pytest.raises(exception.DeviceInUse):
            driver.reserve_device_name(INSTANCE_UUID, VOL_B, taken)
    with pytest.raises(exception.InvalidInput):
        driver.reserve_device_name(INSTANCE_UUID, VOL_B, '/dev/sdk1')


def test_release_and_the_reservation_list(driver):
    before = time.time()
    driver.reserve_device_name(INSTANCE_UUID, VOL)
    [held] = driver.reservations()
    assert held.pop('reserved_at') >= before
    assert held == {'instance_uuid': INSTANCE_UUID, 'volume_id': VOL, 'device': '/dev/sdb'}
    driver.release_device_name(INSTANCE_UUID, VOL)
    driver.release_device_name(INSTANCE_UUID, VOL)  # no-op
    assert driver.reservations() == []
    assert driver.reserve_device_name(INSTANCE_UUID, VOL_B) == '/dev/sdb'


def test_reservations_survive_a_restart_and_name_nothing_secret(make_driver, guest, conf):
    make_driver().reserve_device_name(INSTANCE_UUID, VOL)
    assert [r['device'] for r in make_driver().reservations()] == ['/dev/sdb']


def test_reservations_of_a_detach_are_dropped(driver):
    driver.reserve_device_name(INSTANCE_UUID, VOL)
    driver.detach_volume(None, INSTANCE, None, VOL)
    assert driver.reservations() == []


def test_letters():
    assert [naming.letters(i) for i in (0, 1, 25, 26, 27, 701, 702)] == [
        'a', 'b', 'z', 'aa', 'ab', 'zz', 'aaa']
    assert naming.next_free('sd', {'sdb', 'sdc'}) == 'sdd'
    assert naming.next_free('sd', {'sd' + naming.letters(i) for i in range(300)}) is None


def test_concurrent_reservations_in_threads_get_distinct_names(driver):
    volumes = [str(uuid.uuid4()) for _ in range(24)]
    names, failures = {}, []
    barrier = threading.Barrier(len(volumes))

    def reserve(volume_id):
        try:
            barrier.wait()
            names[volume_id] = driver.reserve_device_name(INSTANCE_UUID, volume_id)
        except Exception as exc:  # noqa: BLE001
            failures.append(exc)
    threads = [threading.Thread(target=reserve, args=(v,)) for v in volumes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert len(set(names.values())) == len(volumes)


def _reserve_in_a_process(state_path, volumes, start, out):
    """A second worker process: its own libvirt connection (a fake showing the same
    domain), the same state_path."""
    host.libvirt = fake_libvirt.FakeLibvirt()
    host.libvirt.define(INSTANCE_UUID, sample('domain.xml'))
    conf = cfg.ConfigOpts()
    aw_conf.register_opts(conf)
    conf(args=[], default_config_files=[])
    conf.set_override('state_path', state_path)
    driver = driver_mod.LibvirtDriver(conf)
    start.wait()
    out.put([(v, driver.reserve_device_name(INSTANCE_UUID, v)) for v in volumes])


def test_concurrent_reservations_in_two_processes_get_distinct_names(conf):
    ctx = multiprocessing.get_context('spawn')
    start, out = ctx.Event(), ctx.Queue()
    batches = [[str(uuid.uuid4()) for _ in range(12)] for _ in range(2)]
    procs = [ctx.Process(target=_reserve_in_a_process,
                         args=(conf.state_path, batch, start, out)) for batch in batches]
    for p in procs:
        p.start()
    start.set()
    got = [pair for _ in procs for pair in out.get(timeout=60)]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    names = [name for _, name in got]
    assert len(got) == 24 and len(set(names)) == 24

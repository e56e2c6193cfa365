"""The connection: libvirt's event loop first, opened lazily, reopened after it broke;
errors with libvirt's message; the options; loading the driver by name."""
import time

import pytest

from attachworker import exception
from attachworker import virt
from attachworker.virt.libvirt import LibvirtDriver
from attachworker.virt.libvirt import errors
from attachworker.virt.libvirt import host
from tests.unit.virt import fake_libvirt
from tests.unit.virt.conftest import INSTANCE
from tests.unit.virt.conftest import INSTANCE_UUID
from tests.unit.virt.conftest import VOL
from tests.unit.virt.conftest import rbd_info

LIB = fake_libvirt.FakeLibvirt


def test_event_loop_is_registered_before_the_connection_once_per_process(
        make_driver, guest, lib):
    first, second = make_driver(), make_driver()
    assert 'open' not in lib.calls  # lazily: nothing before the first call
    first.get_attachments(INSTANCE_UUID)
    second.get_attachments(INSTANCE_UUID)
    assert lib.calls.count('virEventRegisterDefaultImpl') == 1
    assert lib.calls.index('virEventRegisterDefaultImpl') < lib.calls.index('open')
    assert lib.calls.count('open') == 2  # one connection per driver
    events = sorted(event_id for _, event_id, _, _ in lib.callbacks)
    assert events == sorted([LIB.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
                             LIB.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED] * 2)


def test_one_connection_for_many_calls(driver, guest, lib):
    driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL)
    driver.get_attachments(INSTANCE_UUID)
    driver.reserve_device_name(INSTANCE_UUID, '0f0e3c4a-5b6d-4e7f-8a9b-0c1d2e3f4a5c')
    assert len(lib.connections) == 1 and driver.host.opened == 1


def test_reconnects_after_libvirtd_closed_the_connection(driver, guest, lib):
    driver.get_attachments(INSTANCE_UUID)
    lib.break_connections()
    time.sleep(0.05)  # the close callback runs in the event loop thread
    assert driver.host._conn is None
    driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL)
    assert len(lib.connections) == 2
    assert driver.get_attachments(INSTANCE_UUID)[0]['volume_id'] == VOL


def test_reconnects_when_the_connection_is_dead_before_the_close_event(
        driver, guest, lib):
    driver.get_attachments(INSTANCE_UUID)
    lib.connections[0].alive = False  # isAlive() says so; no close event yet
    assert driver.get_attachments(INSTANCE_UUID) == []
    assert len(lib.connections) == 2


def test_a_read_is_retried_once_on_a_new_connection(driver, guest, lib, monkeypatch):
    driver.get_attachments(INSTANCE_UUID)
    lookups = []
    real = fake_libvirt.FakeConnection.lookupByUUIDString

    def lookup(self, uuid):
        lookups.append(self)
        if len(lookups) == 1:
            raise fake_libvirt.libvirtError('Cannot recv data: Connection reset by peer',
                                            LIB.VIR_ERR_SYSTEM_ERROR, LIB.VIR_FROM_RPC)
        return real(self, uuid)
    monkeypatch.setattr(fake_libvirt.FakeConnection, 'lookupByUUIDString', lookup)
    assert driver.get_attachments(INSTANCE_UUID) == []
    assert lookups[0] is not lookups[1]


def test_a_call_on_a_broken_connection_fails_ambiguously_and_drops_it(
        driver, guest, lib, monkeypatch):
    driver.get_attachments(INSTANCE_UUID)

    def broken(self, xml, flags=0):
        raise fake_libvirt.libvirtError('Cannot recv data: Connection reset by peer',
                                        LIB.VIR_ERR_SYSTEM_ERROR, LIB.VIR_FROM_REMOTE)
    monkeypatch.setattr(fake_libvirt.FakeDomain, 'attachDeviceFlags', broken)
    with pytest.raises(errors.LibvirtCallFailed, match='Connection reset') as caught:
        driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL)
    assert 'attach the disk' in str(caught.value)
    assert caught.value.expected is False  # libvirtd may have done it after all
    assert driver.host._conn is None  # the next call reconnects
    driver.get_attachments(INSTANCE_UUID)
    assert len(lib.connections) == 2


def test_libvirtd_down_is_a_clear_definite_error(make_driver, guest, lib):
    lib.refuse_connections = True
    driver = make_driver()
    with pytest.raises(errors.HypervisorUnavailable) as caught:
        driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL)
    assert 'qemu:///system' in str(caught.value) and 'libvirt-sock' in str(caught.value)
    assert caught.value.expected is True
    lib.refuse_connections = False
    driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL)


def test_without_libvirt_python_the_driver_says_so(conf, monkeypatch):
    monkeypatch.setattr(host, 'libvirt', None)
    with pytest.raises(errors.LibvirtNotInstalled, match='libvirt-python'):
        LibvirtDriver(conf)


def test_options_and_their_defaults(conf):
    assert conf.libvirt.connection_uri == 'qemu:///system'
    assert conf.libvirt.disk_bus == 'scsi'
    assert conf.libvirt.rbd_secret_uuid is None and conf.libvirt.rbd_user is None
    assert (conf.libvirt.device_detach_attempts, conf.libvirt.device_detach_timeout) == (8, 20)
    with pytest.raises(ValueError):
        conf.set_override('disk_bus', 'ide', group='libvirt')


def test_capabilities(driver):
    assert driver.capabilities == {'supports_multiattach': True,
                                   'supports_device_naming': True,
                                   'supports_extend_volume': True,
                                   'supports_refresh_connection': True}


def test_loaded_by_name(conf, lib):
    if 'libvirt' not in virt.installed_drivers():
        pytest.skip('entry point not installed yet: run tools/bootstrap (pip install -e .)')
    conf.set_override('driver', 'libvirt', group='virt')
    assert isinstance(virt.load_driver(conf), LibvirtDriver)


def test_driver_errors_are_virt_driver_errors():
    for cls in (errors.InstanceNotFound, errors.UnsupportedVolume, errors.LibvirtCallFailed,
                errors.DeviceDetachFailed, errors.HypervisorUnavailable,
                errors.OsBrickMissing, errors.StorageConnectFailed, errors.NoFreeDevice,
                errors.VolumeAttachedElsewhere, errors.LibvirtNotInstalled):
        assert issubclass(cls, exception.VirtDriverError)

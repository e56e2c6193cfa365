"""libvirt driver extend_volume: blockResize of the running guest's disk, in bytes."""
import pytest

from attachworker import exception
from attachworker.virt.libvirt import errors
from tests.unit.virt import fake_libvirt
from tests.unit.virt.conftest import INSTANCE
from tests.unit.virt.conftest import OTHER_UUID
from tests.unit.virt.conftest import VOL
from tests.unit.virt.conftest import VOL_B
from tests.unit.virt.conftest import iscsi_info
from tests.unit.virt.conftest import rbd_info

GiB = 1024 ** 3
BYTES = fake_libvirt.FakeLibvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES


@pytest.fixture
def attached(driver, guest):
    driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL, {'flow': 'attachments'})
    return guest


def test_the_running_guests_disk_is_resized_in_bytes(driver, attached):
    assert driver.capabilities['supports_extend_volume'] is True
    assert driver.extend_volume(None, None, INSTANCE, VOL, 2 * GiB) == GiB  # what it had
    assert attached.resizes == [('sdb', 2 * GiB, BYTES)]
    assert attached.sizes['sdb'] == 2 * GiB


def test_the_same_size_again_changes_nothing(driver, attached):
    driver.extend_volume(None, None, INSTANCE, VOL, 2 * GiB)
    assert driver.extend_volume(None, None, INSTANCE, VOL, 2 * GiB) == 2 * GiB
    assert len(attached.resizes) == 1


def test_a_smaller_size_is_refused_and_nothing_is_resized(driver, attached):
    attached.sizes['sdb'] = 3 * GiB
    with pytest.raises(exception.VolumeNotExtendable) as refused:
        driver.extend_volume(None, None, INSTANCE, VOL, 2 * GiB)
    assert refused.value.expected and 'would shrink it' in str(refused.value)
    assert attached.resizes == []


def test_a_stopped_guest_needs_nothing(driver, attached):
    attached.stop()
    assert driver.extend_volume(None, None, INSTANCE, VOL, 2 * GiB) is None
    assert attached.resizes == []


def test_a_volume_the_guest_does_not_have_is_refused(driver, attached):
    with pytest.raises(exception.VolumeNotExtendable) as refused:
        driver.extend_volume(None, None, INSTANCE, VOL_B, 2 * GiB)
    assert 'has no such disk in the running guest' in str(refused.value)
    with pytest.raises(errors.InstanceNotFound):
        driver.extend_volume(None, None, {'uuid': OTHER_UUID}, VOL, 2 * GiB)


def test_a_block_disk_is_refused_until_the_host_device_can_be_rescanned(driver, guest):
    driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/sdb', VOL)
    with pytest.raises(exception.ExtendVolumeNotSupported) as refused:
        driver.extend_volume(None, None, INSTANCE, VOL, 2 * GiB)
    assert refused.value.expected and 'rescanned' in str(refused.value)
    assert guest.resizes == []


def test_a_libvirt_failure_is_reported_with_libvirts_message(driver, attached):
    attached.resize_error = fake_libvirt.libvirtError('internal error: block_resize failed')
    with pytest.raises(errors.LibvirtCallFailed) as failed:
        driver.extend_volume(None, None, INSTANCE, VOL, 2 * GiB)
    assert 'block_resize failed' in str(failed.value)
    assert 'resize disk sdb' in str(failed.value)

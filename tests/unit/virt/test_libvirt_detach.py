"""libvirt driver detach: the wait for the guest, retries, and what is left when the
guest never lets go."""
import threading
import time

import pytest

from attachworker import detach as detach_pipeline
from attachworker.virt.libvirt import errors
from attachworker.virt.libvirt import records
from tests.unit.virt import fake_libvirt
from tests.unit.virt.conftest import CHAP_SECRET
from tests.unit.virt.conftest import INSTANCE
from tests.unit.virt.conftest import INSTANCE_UUID
from tests.unit.virt.conftest import OTHER_UUID
from tests.unit.virt.conftest import VOL
from tests.unit.virt.conftest import attached_disk
from tests.unit.virt.conftest import iscsi_info
from tests.unit.virt.conftest import rbd_info
from tests.unit.virt.conftest import sample

LIB = fake_libvirt.FakeLibvirt
RECORD = {'flow': 'attachments', 'attachment_id': '5d77a1e2-0000-4000-8000-00000000000a',
          'mode': 'rw'}


def detaches(guest):
    return [flags for verb, _, flags in guest.requests if verb == 'detach']


@pytest.fixture
def attached(driver, guest):
    driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL, RECORD)
    guest.requests.clear()
    return driver


def test_detach_waits_for_the_device_removed_event(attached, guest):
    guest.mode = 'delayed'  # the guest lets go 0.3 s after the request
    started = time.monotonic()
    attached.detach_volume(None, INSTANCE, '/dev/sdb', VOL)
    took = time.monotonic() - started
    assert 0.3 <= took < 1.0  # woken by the event, not by the 1 s timeout
    assert guest.live_detach_requests == 1
    assert attached_disk(guest, 'live') == [] and attached_disk(guest, 'config') == []
    assert detaches(guest) == [LIB.VIR_DOMAIN_AFFECT_LIVE, LIB.VIR_DOMAIN_AFFECT_CONFIG]
    assert attached.get_attachments(INSTANCE_UUID) == []
    assert attached.attachment_records(INSTANCE_UUID) == {}
    assert records.NAMESPACE not in guest.meta['live']  # the element is gone


def test_detach_of_a_cooperating_guest_is_quick(attached, guest):
    started = time.monotonic()
    attached.detach_volume(None, INSTANCE, '/dev/sdb', VOL)
    assert time.monotonic() - started < 0.5
    assert attached.get_attachments(INSTANCE_UUID) == []


def test_a_guest_that_ignores_the_first_request_is_asked_again(attached, guest):
    guest.mode, guest.late_after = 'late', 2
    attached.detach_volume(None, INSTANCE, '/dev/sdb', VOL)
    assert guest.live_detach_requests == 2
    assert attached.get_attachments(INSTANCE_UUID) == []


def test_a_lost_event_is_caught_by_reading_the_xml(attached, guest):
    guest.mode = 'silent'
    attached.detach_volume(None, INSTANCE, '/dev/sdb', VOL)
    assert guest.live_detach_requests == 1
    assert attached.get_attachments(INSTANCE_UUID) == []


@pytest.mark.parametrize('busy', [False, True], ids=['quiet', 'already-unplugging'])
def test_a_guest_that_never_lets_go(attached, guest, busy, conf):
    guest.mode, guest.busy_error = 'never', busy
    started = time.monotonic()
    with pytest.raises(errors.DeviceDetachFailed, match='2 detach requests') as caught:
        attached.detach_volume(None, INSTANCE, '/dev/sdb', VOL)
    assert time.monotonic() - started >= 2 * conf.libvirt.device_detach_timeout
    assert caught.value.expected is False  # detach.py asks get_attachments
    assert guest.live_detach_requests == 2
    # nothing changed: the disk is in the running guest and in its definition
    [att] = attached.get_attachments(INSTANCE_UUID)
    assert (att['volume_id'], att['flow']) == (VOL, 'attachments')
    assert len(attached_disk(guest, 'config')) == 1
    assert detaches(guest) == [LIB.VIR_DOMAIN_AFFECT_LIVE] * 2


def test_detach_pipeline_sees_the_host_kept_the_volume(attached, guest, conf):
    conf.set_override('device_detach_attempts', 1, group='libvirt')
    guest.mode = 'never'
    with pytest.raises(detach_pipeline.HostKeptTheVolume) as caught:
        detach_pipeline._host_detach(attached, None, INSTANCE, '/dev/sdb', VOL)
    assert caught.value.expected is True


def test_removal_failed_event_is_final(attached, guest):
    guest.mode = 'fail'
    started = time.monotonic()
    with pytest.raises(errors.DeviceDetachFailed, match='device-removal-failed'):
        attached.detach_volume(None, INSTANCE, '/dev/sdb', VOL)
    assert time.monotonic() - started < 0.5 and guest.live_detach_requests == 1
    assert [a['volume_id'] for a in attached.get_attachments(INSTANCE_UUID)] == [VOL]


def test_guest_stopping_during_the_wait(attached, guest):
    guest.mode = 'never'
    threading.Timer(0.2, guest.stop).start()
    attached.detach_volume(None, INSTANCE, '/dev/sdb', VOL)
    assert guest.live_detach_requests == 1
    assert attached_disk(guest, 'config') == []


def test_stopped_domain_detaches_from_its_definition_without_waiting(lib, make_driver):
    guest = lib.define(INSTANCE_UUID, sample('domain.xml'), active=False)
    driver = make_driver()
    driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL, RECORD)
    guest.mode = 'never'  # would not matter: nothing is live
    driver.detach_volume(None, INSTANCE, None, VOL)
    assert detaches(guest) == [LIB.VIR_DOMAIN_AFFECT_CONFIG]
    assert driver.get_attachments(INSTANCE_UUID) == []


def test_volume_not_attached_is_a_no_op(driver, guest):
    driver.detach_volume(None, INSTANCE, '/dev/sdb', VOL)
    assert detaches(guest) == []


def test_stale_mountpoint_does_not_matter(attached, guest):
    attached.detach_volume(None, INSTANCE, '/dev/sdq', VOL)
    assert attached.get_attachments(INSTANCE_UUID) == []


def test_block_volume_is_disconnected_after_the_disk_is_gone(driver, guest, connectors):
    driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/sdb', VOL, RECORD)
    disks_then = []
    connectors.on_disconnect = lambda: disks_then.append(attached_disk(guest, 'live'))
    driver.detach_volume(None, INSTANCE, '/dev/sdb', VOL)
    assert disks_then == [[]]  # the disk had left the guest
    [(_, kind, props, device_info)] = connectors.of('disconnect')
    assert kind == 'iscsi'
    assert props['target_iqn'].endswith(VOL) and props['target_portal'] == '192.0.2.20:3260'
    assert CHAP_SECRET not in str(props) and 'auth_password' not in props
    assert device_info['path'].startswith('/dev/disk/by-path/ip-192.0.2.20:3260')
    assert driver.attachment_records(INSTANCE_UUID) == {}


def test_failed_disconnect_keeps_the_record_and_the_next_detach_retries(
        driver, guest, connectors):
    driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/sdb', VOL, RECORD)
    connectors.disconnect_error = RuntimeError('multipathd: map in use')
    with pytest.raises(errors.StorageConnectFailed, match='map in use'):
        driver.detach_volume(None, INSTANCE, '/dev/sdb', VOL)
    assert driver.get_attachments(INSTANCE_UUID) == []  # the guest let go
    assert set(driver.attachment_records(INSTANCE_UUID)) == {VOL}  # kept for the retry
    connectors.disconnect_error = None
    driver.detach_volume(None, INSTANCE, '/dev/sdb', VOL)
    assert len(connectors.of('disconnect')) == 2
    assert driver.attachment_records(INSTANCE_UUID) == {}


def test_multiattach_volume_keeps_its_host_connection_for_the_other_guest(
        lib, driver, guest, connectors):
    lib.define(OTHER_UUID, sample('domain.xml').replace(INSTANCE_UUID, OTHER_UUID))
    info = iscsi_info()
    info['multiattach'] = True
    driver.attach_volume(None, info, INSTANCE, '/dev/sdb', VOL, RECORD)
    driver.attach_volume(None, info, {'uuid': OTHER_UUID}, '/dev/sdb', VOL, RECORD)
    driver.detach_volume(None, INSTANCE, '/dev/sdb', VOL)
    assert connectors.of('disconnect') == []
    driver.detach_volume(None, {'uuid': OTHER_UUID}, '/dev/sdb', VOL)
    assert len(connectors.of('disconnect')) == 1


def test_detach_works_after_libvirtd_restarted(attached, guest, lib):
    lib.break_connections()
    time.sleep(0.05)  # the close event reaches the driver through the event loop
    attached.detach_volume(None, INSTANCE, '/dev/sdb', VOL)
    assert len(lib.connections) == 2
    assert attached.get_attachments(INSTANCE_UUID) == []


def test_detach_live_gives_up_after_the_attempts(guest, lib, make_driver):
    """Guest.detach_live on its own, with short waits."""
    from attachworker.virt.libvirt import disk
    from attachworker.virt.libvirt import guest as guest_mod
    driver = make_driver()
    driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL)
    guest.mode = 'never'
    g = guest_mod.Guest(driver.host, driver.host.require_domain(INSTANCE_UUID), INSTANCE_UUID)
    found = disk.by_serial(g.xml(), VOL)
    with pytest.raises(errors.DeviceDetachFailed, match='5 detach requests'):
        g.detach_live(VOL, found, attempts=5, timeout=0.02)
    assert guest.live_detach_requests == 5


def test_unknown_libvirt_error_on_detach_is_translated(attached, guest, monkeypatch):
    def refuse(self, xml, flags=0):
        raise fake_libvirt.libvirtError('operation failed: guest agent not responding',
                                        LIB.VIR_ERR_OPERATION_FAILED)
    monkeypatch.setattr(fake_libvirt.FakeDomain, 'detachDeviceFlags', refuse)
    with pytest.raises(errors.LibvirtCallFailed, match='guest agent not responding') as c:
        attached.detach_volume(None, INSTANCE, '/dev/sdb', VOL)
    assert c.value.expected is False

"""libvirt driver attach: flags, idempotence, clashes, records in the domain metadata."""
import datetime
import sys
from xml.etree import ElementTree as ET

import pytest

from attachworker import exception
from attachworker.virt.libvirt import brick
from attachworker.virt.libvirt import errors
from attachworker.virt.libvirt import records
from tests.unit.virt import fake_libvirt
from tests.unit.virt.conftest import INSTANCE
from tests.unit.virt.conftest import INSTANCE_UUID
from tests.unit.virt.conftest import VOL
from tests.unit.virt.conftest import VOL_B
from tests.unit.virt.conftest import attached_disk
from tests.unit.virt.conftest import iscsi_info
from tests.unit.virt.conftest import rbd_info
from tests.unit.virt.conftest import sample
from tests.unit.virt.conftest import sent_disks

LIVE, CONFIG = fake_libvirt.FakeLibvirt.VIR_DOMAIN_AFFECT_LIVE, \
    fake_libvirt.FakeLibvirt.VIR_DOMAIN_AFFECT_CONFIG
REAL_CONNECTOR_FOR = brick.connector_for  # before the fixture replaces it
RECORD = {'flow': 'attachments', 'attachment_id': '5d77a1e2-0000-4000-8000-00000000000a',
          'mode': 'rw'}


def flags_of(guest, verb):
    return [flags for v, _, flags in guest.requests if v == verb]


def test_running_domain_gets_the_disk_live_and_in_its_definition(driver, guest):
    driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL, RECORD)
    assert flags_of(guest, 'attach') == [LIVE | CONFIG]
    assert flags_of(guest, 'setMetadata') == [LIVE | CONFIG]
    assert [d.findtext('serial') for d in attached_disk(guest, 'live')] == [VOL]
    assert [d.findtext('serial') for d in attached_disk(guest, 'config')] == [VOL]


def test_device_first_then_its_record(driver, guest):
    driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL, RECORD)
    assert [verb for verb, _, _ in guest.requests] == ['attach', 'setMetadata']


def test_stopped_domain_gets_it_in_its_definition_only(lib, make_driver):
    guest = lib.define(INSTANCE_UUID, sample('domain.xml'), active=False)
    make_driver().attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL, RECORD)
    assert flags_of(guest, 'attach') == [CONFIG]
    assert flags_of(guest, 'setMetadata') == [CONFIG]
    guest.start()  # the disk and its record come up with the guest
    [att] = make_driver().get_attachments(INSTANCE_UUID)
    assert (att['volume_id'], att['flow']) == (VOL, 'attachments')


def test_transient_domain_gets_it_live_only(lib, make_driver):
    guest = lib.define(INSTANCE_UUID, sample('domain.xml'), persistent=False)
    make_driver().attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL, RECORD)
    assert flags_of(guest, 'attach') == [LIVE]
    assert flags_of(guest, 'setMetadata') == [LIVE]


def test_attaching_again_at_the_same_device_does_nothing(driver, guest):
    driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL, RECORD)
    before = driver.attachment_records(INSTANCE_UUID)
    driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL, RECORD)
    assert len(sent_disks(guest)) == 1
    assert len(flags_of(guest, 'setMetadata')) == 1
    assert driver.attachment_records(INSTANCE_UUID) == before
    assert len(attached_disk(guest)) == 1


def test_attaching_again_rewrites_a_record_lost_in_a_crash(driver, guest):
    driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL, RECORD)
    guest.meta = {'live': {}, 'config': {}}  # killed between the disk and its record
    assert driver.get_attachments(INSTANCE_UUID)[0]['flow'] is None
    driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL, RECORD)
    assert len(sent_disks(guest)) == 1
    assert driver.get_attachments(INSTANCE_UUID)[0]['flow'] == 'attachments'


def test_same_volume_at_another_device_is_refused(driver, guest):
    driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL)
    with pytest.raises(errors.VolumeAttachedElsewhere, match='/dev/sdb') as caught:
        driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdc', VOL)
    assert caught.value.expected is True
    assert len(sent_disks(guest)) == 1


@pytest.mark.parametrize('device', ['/dev/vda', '/dev/vdb', '/dev/hda'],
                         ids=['root', 'ephemeral', 'cdrom'])
def test_device_of_the_guest_itself_is_in_use(driver, guest, device):
    with pytest.raises(exception.DeviceInUse) as caught:
        driver.attach_volume(None, rbd_info(), INSTANCE, device, VOL)
    assert caught.value.expected is True
    assert sent_disks(guest) == []


def test_device_of_another_volume_is_in_use(driver, guest):
    driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL)
    with pytest.raises(exception.DeviceInUse):
        driver.attach_volume(None, rbd_info(VOL_B), INSTANCE, '/dev/sdb', VOL_B)
    assert len(sent_disks(guest)) == 1


def test_device_only_in_the_persistent_definition_is_in_use(driver, guest, lib):
    conn = lib.open('qemu:///system')
    other = sample('rbd_noauth.xml').replace(VOL, VOL_B)
    conn.lookupByUUIDString(INSTANCE_UUID).attachDeviceFlags(other, CONFIG)
    with pytest.raises(exception.DeviceInUse):
        driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL)


def test_device_reserved_for_another_volume_is_in_use(driver, guest):
    assert driver.reserve_device_name(INSTANCE_UUID, VOL_B) == '/dev/sdb'
    with pytest.raises(exception.DeviceInUse):
        driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL)
    driver.attach_volume(None, rbd_info(VOL_B), INSTANCE, '/dev/sdb', VOL_B)
    assert driver.reservations() == []  # the attach used the reservation


def test_unknown_domain_is_a_definite_failure(make_driver, lib):
    driver = make_driver()
    with pytest.raises(errors.InstanceNotFound, match=INSTANCE_UUID) as caught:
        driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL)
    assert caught.value.expected is True and caught.value.code == 404
    with pytest.raises(errors.InstanceNotFound):
        driver.reserve_device_name(INSTANCE_UUID, VOL)
    # nothing of a domain that is not here is attached here
    assert driver.get_attachments(INSTANCE_UUID) == []
    driver.detach_volume(None, INSTANCE, '/dev/sdb', VOL)


def test_libvirt_refusal_is_definite_when_nothing_changed(driver, guest):
    guest.attach_error = fake_libvirt.libvirtError(
        "internal error: unable to execute QEMU command 'blockdev-add': error connecting: "
        'Permission denied')
    with pytest.raises(errors.LibvirtCallFailed, match='error connecting') as caught:
        driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL, RECORD)
    assert caught.value.expected is True
    assert attached_disk(guest) == [] and guest.meta['live'] == {}


def test_failed_block_attach_undoes_the_host_connection(driver, guest, connectors):
    guest.attach_error = fake_libvirt.libvirtError('unable to open /dev/disk/by-path/x')
    with pytest.raises(errors.LibvirtCallFailed) as caught:
        driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/sdb', VOL, RECORD)
    assert caught.value.expected is True
    [(_, kind, props, device_info)] = connectors.of('disconnect')
    assert kind == 'iscsi' and props['target_iqn'].endswith(VOL)
    assert device_info['path'].startswith('/dev/disk/by-path/ip-192.0.2.20:3260')


def test_failed_undo_of_the_host_connection_leaves_the_failure_ambiguous(
        driver, guest, connectors):
    guest.attach_error = fake_libvirt.libvirtError('unable to open /dev/disk/by-path/x')
    connectors.disconnect_error = RuntimeError('iscsiadm: session busy')
    with pytest.raises(errors.LibvirtCallFailed) as caught:
        driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/sdb', VOL, RECORD)
    assert caught.value.expected is False


def test_os_brick_connect_failure(driver, guest, connectors):
    connectors.connect_error = RuntimeError('Could not login to any iSCSI portal')
    with pytest.raises(errors.StorageConnectFailed, match='iSCSI portal'):
        driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/sdb', VOL, RECORD)
    assert sent_disks(guest) == []


def test_without_os_brick_block_volumes_are_refused_rbd_still_works(
        driver, guest, monkeypatch):
    monkeypatch.setattr(brick, 'connector_for', REAL_CONNECTOR_FOR)
    monkeypatch.setitem(sys.modules, 'os_brick', None)
    monkeypatch.setitem(sys.modules, 'os_brick.initiator', None)
    monkeypatch.setitem(sys.modules, 'os_brick.initiator.connector', None)
    with pytest.raises(errors.OsBrickMissing, match='os-brick') as caught:
        driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/sdb', VOL, RECORD)
    assert caught.value.expected is True and sent_disks(guest) == []
    driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL, RECORD)


def test_get_attachments_joins_disks_and_records(driver, guest):
    driver.attach_volume(None, rbd_info(access_mode='ro'), INSTANCE, '/dev/sdc', VOL_B,
                         dict(RECORD, mode='ro'))
    driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL, RECORD)
    got = driver.get_attachments(INSTANCE_UUID)
    for att in got:
        assert datetime.datetime.fromisoformat(att.pop('attached_at')).tzinfo is not None
    assert got == [
        {'volume_id': VOL, 'mountpoint': '/dev/sdb', 'driver_volume_type': 'rbd',
         'access_mode': 'rw', 'mode': 'rw', 'flow': 'attachments',
         'attachment_id': RECORD['attachment_id']},
        {'volume_id': VOL_B, 'mountpoint': '/dev/sdc', 'driver_volume_type': 'rbd',
         'access_mode': 'ro', 'mode': 'ro', 'flow': 'attachments',
         'attachment_id': RECORD['attachment_id']}]


def test_a_disk_without_a_record_is_attached_with_no_flow(driver, guest, lib):
    conn = lib.open('qemu:///system')
    conn.lookupByUUIDString(INSTANCE_UUID).attachDeviceFlags(sample('rbd_noauth.xml'),
                                                             LIVE | CONFIG)
    assert driver.get_attachments(INSTANCE_UUID) == [
        {'volume_id': VOL, 'mountpoint': '/dev/sdb', 'driver_volume_type': 'rbd',
         'access_mode': 'rw', 'mode': None, 'flow': None, 'attachment_id': None,
         'attached_at': None}]


def test_a_record_without_a_disk_is_no_attachment_and_is_dropped(driver, guest):
    driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL, RECORD)
    stale = records.format_records({VOL_B: {'mountpoint': '/dev/sdc', 'flow': 'legacy'}})
    for which in ('live', 'config'):
        recs = records.parse(guest.meta[which][records.NAMESPACE])
        recs.update(records.parse(stale))
        guest.meta[which][records.NAMESPACE] = records.format_records(recs)
    assert [a['volume_id'] for a in driver.get_attachments(INSTANCE_UUID)] == [VOL]
    assert set(driver.attachment_records(INSTANCE_UUID)) == {VOL}


def test_records_survive_a_restart_of_the_worker(make_driver, guest):
    make_driver().attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL, RECORD)
    first = make_driver().get_attachments(INSTANCE_UUID)
    again = make_driver().get_attachments(INSTANCE_UUID)  # a new process, no file of ours
    assert first == again and again[0]['attachment_id'] == RECORD['attachment_id']


def test_records_are_namespaced_metadata_without_secrets(driver, guest):
    driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/sdb', VOL, RECORD)
    text = guest.meta['config'][records.NAMESPACE]
    volume = ET.fromstring(text).find('volume')
    assert volume.get('id') == VOL and volume.get('flow') == 'attachments'
    assert 'auth_password' not in text and 'chap' not in text.lower()
    conn = records.parse(text)[VOL]['connection']
    assert conn['target_iqn'].endswith(VOL) and conn['device_info']['path']


def test_metadata_write_is_retried_once_on_a_new_connection(driver, guest, lib, monkeypatch):
    calls = []
    real = fake_libvirt.FakeDomain.setMetadata

    def flaky(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            lib.break_connections()
            raise fake_libvirt.libvirtError('Cannot recv data: Connection reset by peer',
                                            lib.VIR_ERR_SYSTEM_ERROR, lib.VIR_FROM_RPC)
        return real(self, *args, **kwargs)
    monkeypatch.setattr(fake_libvirt.FakeDomain, 'setMetadata', flaky)
    driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL, RECORD)
    assert len(calls) == 2 and len(lib.connections) == 2
    assert driver.get_attachments(INSTANCE_UUID)[0]['flow'] == 'attachments'

"""libvirt driver refresh_connection: a stopped guest's RBD disk rebuilt from new
connection info in one defineXML, the record naming the new attachment."""
import pytest

from attachworker import exception
from attachworker.virt.libvirt import disk
from attachworker.virt.libvirt import errors
from tests.unit.virt.conftest import CHAP_SECRET
from tests.unit.virt.conftest import INSTANCE
from tests.unit.virt.conftest import KEYRING
from tests.unit.virt.conftest import OTHER_UUID
from tests.unit.virt.conftest import VOL
from tests.unit.virt.conftest import VOL_B
from tests.unit.virt.conftest import iscsi_info
from tests.unit.virt.conftest import rbd_info

NEW = '0c6b6a3e-7f1d-4d2e-9b3a-5e4f6a7b8c9d'
MOVED = rbd_info(hosts=['198.51.100.5', '198.51.100.6'], ports=['3300', '3300'])


@pytest.fixture
def stopped(driver, guest):
    driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL,
                         {'flow': 'attachments', 'attachment_id': 'old-att', 'mode': 'rw'})
    guest.stop()
    return guest


def record(driver):
    return driver.attachment_records(INSTANCE['uuid'])[VOL]


def test_the_disk_gets_the_new_monitors_and_the_record_the_new_attachment(driver, stopped):
    others = [d.xml for d in disk.disks(stopped.config) if d.serial != VOL]
    assert driver.instance_running(INSTANCE['uuid']) is False
    driver.refresh_connection(None, MOVED, INSTANCE, '/dev/sdb', VOL,
                              {'flow': 'attachments', 'attachment_id': NEW, 'mode': 'rw'})
    config = stopped.config
    found = disk.by_serial(config, VOL)
    assert (found.target, found.protocol) == ('sdb', 'rbd')
    assert '198.51.100.5' in found.xml and '192.0.2.11' not in found.xml
    assert KEYRING not in config and CHAP_SECRET not in config
    assert [r[0] for r in stopped.requests].count('defineXML') == 1
    assert 'detach' not in [r[0] for r in stopped.requests]  # never out of the definition
    assert (record(driver)['attachment_id'], record(driver)['flow']) == (NEW, 'attachments')
    assert driver.get_attachments(INSTANCE['uuid'])[0]['attachment_id'] == NEW
    # the other disks of the definition are untouched, in their order
    assert [d.target for d in disk.disks(config)] == ['vda', 'vdb', 'hda', 'sdb']
    assert [d.xml for d in disk.disks(config) if d.serial != VOL] == others


def test_the_console_password_of_the_definition_is_kept(driver, stopped):
    """libvirt leaves secrets out of XML read without VIR_DOMAIN_XML_SECURE: the
    definition written back whole must have been read with them."""
    import xml.etree.ElementTree as ET
    root = ET.fromstring(stopped.config)
    ET.SubElement(root.find('devices'), 'graphics', type='vnc', port='-1',
                  passwd='console-S3cret')
    stopped.config = ET.tostring(root, encoding='unicode')
    driver.refresh_connection(None, MOVED, INSTANCE, '/dev/sdb', VOL,
                              {'flow': 'attachments', 'attachment_id': NEW})
    assert 'passwd="console-S3cret"' in stopped.config
    assert '198.51.100.5' in stopped.config


def test_a_block_disk_is_refused_before_cinder_is_asked(driver, guest, connectors):
    driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/sdb', VOL,
                         {'flow': 'attachments', 'attachment_id': 'old-att'})
    guest.stop()
    with pytest.raises(exception.RefreshNotSupported) as refused:
        driver.check_refresh(INSTANCE['uuid'], VOL)
    assert refused.value.expected


def test_the_check_before_cinder_passes_a_stopped_guests_rbd_disk(driver, stopped):
    driver.check_refresh(INSTANCE['uuid'], VOL)
    with pytest.raises(exception.VolumeNotRefreshable):
        driver.check_refresh(INSTANCE['uuid'], VOL_B)
    stopped.start()
    with pytest.raises(exception.InstanceNotStopped):
        driver.check_refresh(INSTANCE['uuid'], VOL)


def test_refreshing_again_changes_nothing_more(driver, stopped):
    args = (None, MOVED, INSTANCE, '/dev/sdb', VOL, {'flow': 'attachments',
                                                     'attachment_id': NEW})
    driver.refresh_connection(*args)
    first = stopped.config
    driver.refresh_connection(*args)
    assert stopped.config == first


def test_a_running_guest_is_refused_and_left_alone(driver, guest):
    driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL, {'flow': 'attachments'})
    assert driver.instance_running(INSTANCE['uuid']) is True
    before = guest.config
    with pytest.raises(exception.InstanceNotStopped) as refused:
        driver.refresh_connection(None, MOVED, INSTANCE, '/dev/sdb', VOL,
                                  {'attachment_id': NEW})
    assert refused.value.expected
    assert guest.config == before


@pytest.mark.parametrize('volume, mountpoint, info, error', [
    (VOL_B, '/dev/sdc', MOVED, exception.VolumeNotRefreshable),
    (VOL, '/dev/sdc', MOVED, exception.VolumeNotRefreshable),
    (VOL, '/dev/sdb', iscsi_info(), exception.RefreshNotSupported),
])
def test_what_cannot_be_refreshed_is_refused_with_nothing_changed(driver, stopped, volume,
                                                                  mountpoint, info, error):
    before = stopped.config
    with pytest.raises(error) as refused:
        driver.refresh_connection(None, info, INSTANCE, mountpoint, volume,
                                  {'attachment_id': NEW})
    assert refused.value.expected
    assert stopped.config == before
    assert record(driver)['attachment_id'] == 'old-att'


def test_an_unknown_instance_is_instance_not_found(driver, stopped):
    with pytest.raises(errors.InstanceNotFound) as missing:
        driver.instance_running(OTHER_UUID)
    assert isinstance(missing.value, exception.InstanceNotFound)

"""The <disk> the libvirt driver sends for each kind of connection info, against
the samples in samples/ (compared in canonical form)."""
import pytest

from attachworker import exception
from attachworker.virt.libvirt import disk
from attachworker.virt.libvirt import errors
from tests.unit.virt.conftest import CHAP_SECRET
from tests.unit.virt.conftest import CONF_SECRET_UUID
from tests.unit.virt.conftest import INSTANCE
from tests.unit.virt.conftest import KEYRING
from tests.unit.virt.conftest import VOL
from tests.unit.virt.conftest import attached_disk
from tests.unit.virt.conftest import canonical
from tests.unit.virt.conftest import fc_info
from tests.unit.virt.conftest import iscsi_info
from tests.unit.virt.conftest import rbd_info
from tests.unit.virt.conftest import sample
from tests.unit.virt.conftest import sent_disks


def test_canonical_form_ignores_layout_but_not_content():
    a = "<disk type='network' device='disk'><target dev='sdb' bus='scsi'/></disk>"
    b = '<disk device="disk" type="network">\n  <target bus="scsi" dev="sdb" />\n</disk>'
    assert canonical(a) == canonical(b)
    assert canonical(a) != canonical(a.replace('sdb', 'sdc'))


def test_rbd_with_cinder_auth_and_discard(driver, guest):
    driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL)
    [sent] = sent_disks(guest)
    assert canonical(sent) == canonical(sample('rbd_auth.xml'))


def test_rbd_configured_secret_and_user_win_and_force_auth(driver, guest, conf):
    conf.set_override('rbd_secret_uuid', CONF_SECRET_UUID, group='libvirt')
    conf.set_override('rbd_user', 'nova', group='libvirt')
    info = rbd_info(auth=False, discard=False,
                    hosts=['192.0.2.11', '192.0.2.12', '2001:db8::13'],
                    ports=['6789', '6789', '3300'])
    info['data']['auth_username'] = 'cinder'
    driver.attach_volume(None, info, INSTANCE, '/dev/sdb', VOL)
    [sent] = sent_disks(guest)
    assert canonical(sent) == canonical(sample('rbd_conf_secret.xml'))


def test_rbd_configured_secret_without_rbd_user_keeps_cinders_user(driver, guest, conf):
    conf.set_override('rbd_secret_uuid', CONF_SECRET_UUID, group='libvirt')
    driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL)
    [sent] = sent_disks(guest)
    expected = sample('rbd_auth.xml').replace('e7d08e86-21b3-44e3-b346-6b8d6d561fc7',
                                              CONF_SECRET_UUID)
    assert canonical(sent) == canonical(expected)


def test_rbd_rbd_user_alone_does_not_override(driver, guest, conf):
    """As Nova: rbd_user goes with rbd_secret_uuid (the secret holds one user's key)."""
    conf.set_override('rbd_user', 'nova', group='libvirt')
    driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL)
    [sent] = sent_disks(guest)
    assert canonical(sent) == canonical(sample('rbd_auth.xml'))


def test_rbd_without_auth(driver, guest):
    driver.attach_volume(None, rbd_info(auth=False, discard=False), INSTANCE, '/dev/sdb', VOL)
    [sent] = sent_disks(guest)
    assert canonical(sent) == canonical(sample('rbd_noauth.xml'))


def test_rbd_read_only_multiattach(driver, guest):
    info = rbd_info()
    info['multiattach'] = True  # as Nova sets it for a multiattach volume
    driver.attach_volume(None, info, INSTANCE, '/dev/sdc', VOL,
                         {'flow': 'attachments', 'attachment_id': 'a1', 'mode': 'ro'})
    [sent] = sent_disks(guest)
    assert canonical(sent) == canonical(sample('rbd_ro_shareable.xml'))


@pytest.mark.parametrize('where', ['top', 'data'])
def test_multiattach_flag_from_connection_info(driver, guest, where):
    info = rbd_info(access_mode='ro')
    (info if where == 'top' else info['data'])['multiattach'] = True
    driver.attach_volume(None, info, INSTANCE, '/dev/sdc', VOL)
    [sent] = sent_disks(guest)
    assert canonical(sent) == canonical(sample('rbd_ro_shareable.xml'))


def test_iscsi_is_the_host_device_os_brick_connected(driver, guest, connectors):
    info = iscsi_info(qos_specs={'total_bytes_sec': 104857600, 'read_iops_sec': 500,
                                 'consumer': 'front-end'})
    driver.attach_volume(None, info, INSTANCE, '/dev/sdb', VOL)
    [sent] = sent_disks(guest)
    assert canonical(sent) == canonical(sample('iscsi.xml'))
    [connect] = connectors.of('connect')
    assert connect[1] == 'iscsi' and connect[2]['auth_password'] == CHAP_SECRET


def test_fibre_channel_on_the_virtio_bus(driver, guest, conf):
    conf.set_override('disk_bus', 'virtio', group='libvirt')
    driver.attach_volume(None, fc_info(discard=True), INSTANCE, '/dev/vdc', VOL)
    [sent] = sent_disks(guest)
    assert canonical(sent) == canonical(sample('fibre_channel_virtio.xml'))


@pytest.mark.parametrize('info', [rbd_info(), iscsi_info()], ids=['rbd', 'iscsi'])
def test_no_secret_reaches_the_domain(driver, guest, info, caplog):
    caplog.set_level('DEBUG')
    driver.attach_volume(None, info, INSTANCE, '/dev/sdb', VOL)
    everything = ' '.join([guest.live, guest.config] + [str(r) for r in guest.requests]
                          + [str(m) for m in guest.meta.values()])
    for secret in (KEYRING, 'AQBKeyringNeverInXML', CHAP_SECRET):
        assert secret not in everything
        assert secret not in caplog.text
    assert 'Attaching volume' in caplog.text  # the debug line was written, masked


def test_attached_disk_keeps_the_alias_for_device_events(driver, guest):
    driver.attach_volume(None, rbd_info(), INSTANCE, '/dev/sdb', VOL)
    [element] = attached_disk(guest)
    assert element.find('alias').get('name') == 'ua-' + VOL


@pytest.mark.parametrize('info, reason', [
    ({'driver_volume_type': 'nfs', 'data': {'export': 'h:/x', 'name': 'v'}}, 'nfs'),
    ({'driver_volume_type': 'nvmeof', 'data': {}}, 'nvmeof'),
    (rbd_info(name='no-pool'), 'pool/image'),
    (rbd_info(ports=['6789', '6790']), 'ports'),
    (rbd_info(secret_uuid=None), 'rbd_secret_uuid'),
    (rbd_info(auth_username=None), 'no user'),
    (rbd_info(encrypted=True), 'encrypted'),
    (rbd_info(access_mode='shared'), 'access_mode'),
], ids=['nfs', 'nvmeof', 'bad-name', 'ports', 'no-secret', 'no-user', 'encrypted', 'mode'])
def test_unusable_connection_info_is_refused_before_the_guest_is_touched(
        driver, guest, connectors, info, reason):
    before = (guest.live, guest.config)
    with pytest.raises(errors.UnsupportedVolume, match=reason) as caught:
        driver.attach_volume(None, info, INSTANCE, '/dev/sdb', VOL)
    assert caught.value.expected is True  # definite: nothing changed
    assert isinstance(caught.value, exception.VirtDriverError)
    assert (guest.live, guest.config) == before
    assert guest.requests == [] and connectors.calls == []


@pytest.mark.parametrize('mountpoint', ['/dev/sdb1', 'sdb', '/dev/../sdb', '/dev/nbd0',
                                        '/dev/disk/sdb', None])
def test_bad_mountpoint_is_invalid_input(driver, guest, mountpoint):
    with pytest.raises(exception.InvalidInput):
        driver.attach_volume(None, rbd_info(), INSTANCE, mountpoint, VOL)
    assert guest.requests == []


def test_target_of():
    assert disk.target_of('/dev/sdb') == 'sdb'
    assert disk.target_of('/dev/vdaa') == 'vdaa'


def test_log_form_of_connection_info_masks_keyrings_and_passwords():
    from attachworker.virt.libvirt import records
    shown = records.masked(dict(rbd_info(), extra={'cephx_key': 'AQB=='}))
    assert shown['data']['keyring'] == '***' and shown['extra']['cephx_key'] == '***'
    assert shown['data']['auth_username'] == 'cinder' and shown['data']['name'].startswith(
        'volumes/')
    chap = records.masked(iscsi_info())['data']
    assert chap['auth_password'] == '***' and chap['discovery_auth_password'] == '***'
    assert CHAP_SECRET not in str(chap) and chap['auth_method'] == 'CHAP'


def test_unreadable_metadata_lists_disks_without_records():
    from attachworker.virt.libvirt import records
    assert records.parse('<volumes><volume id="x"') == {}
    # as the domain XML shows it (libvirt's metadata() call drops the namespace)
    namespaced = ('<aw:volumes xmlns:aw="%s"><aw:volume id="v" flow="legacy">'
                  '<aw:connection>{"name": "p/i"}</aw:connection></aw:volume></aw:volumes>'
                  % records.NAMESPACE)
    [(vol, rec)] = records.parse(namespaced).items()
    assert (vol, rec['flow'], rec['connection']) == ('v', 'legacy', {'name': 'p/i'})
    assert records.parse(None) == {}

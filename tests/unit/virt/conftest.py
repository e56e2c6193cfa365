"""Fixtures of the libvirt driver's tests: a fake libvirt, one running domain, a
fake os-brick. No libvirt daemon, no libvirt-python needed."""
import pathlib
from xml.etree import ElementTree as ET

import pytest

from attachworker.virt.libvirt import brick
from attachworker.virt.libvirt import driver as driver_mod
from attachworker.virt.libvirt import host
from tests.unit.virt import fake_libvirt

SAMPLES = pathlib.Path(__file__).parent / 'samples'
INSTANCE_UUID = '8f0e3c4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b'
INSTANCE = {'uuid': INSTANCE_UUID, 'project_id': 'p1'}
OTHER_UUID = '1a2b3c4d-0000-4000-8000-000000000002'
VOL = 'b1204e0c-1111-4111-8111-111111111111'
VOL_B = 'b1204e0c-2222-4222-8222-222222222222'
VOL_C = 'b1204e0c-3333-4333-8333-333333333333'
CINDER_SECRET_UUID = 'e7d08e86-21b3-44e3-b346-6b8d6d561fc7'
CONF_SECRET_UUID = '3e6af926-ebaf-44ec-ab40-714233859982'
KEYRING = '[client.cinder]\n\tkey = AQBKeyringNeverInXML0000000000000000000=='
CHAP_SECRET = 'chap-S3cret-never-in-xml'


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()


def canonical(xml: str) -> str:
    """Attribute order, quotes, whitespace and comments do not count."""
    element = ET.fromstring(xml)
    return ET.canonicalize(ET.tostring(element, encoding='unicode'), strip_text=True)


def rbd_info(volume_id=VOL, auth=True, discard=True, access_mode='rw', **extra):
    data = {'name': 'volumes/volume-%s' % volume_id, 'hosts': ['192.0.2.11'],
            'ports': ['6789'], 'cluster_name': 'ceph', 'auth_enabled': auth,
            'auth_username': 'cinder' if auth else None, 'secret_type': 'ceph',
            'secret_uuid': CINDER_SECRET_UUID if auth else None, 'volume_id': volume_id,
            'discard': discard, 'access_mode': access_mode, 'encrypted': False,
            'qos_specs': None, 'keyring': KEYRING}
    data.update(extra)
    return {'driver_volume_type': 'rbd', 'data': data}


def iscsi_info(volume_id=VOL, **extra):
    data = {'target_iqn': 'iqn.2010-10.org.openstack:volume-%s' % volume_id,
            'target_portal': '192.0.2.20:3260', 'target_lun': 1, 'target_discovered': False,
            'auth_method': 'CHAP', 'auth_username': 'chapuser', 'auth_password': CHAP_SECRET,
            'discovery_auth_password': CHAP_SECRET, 'volume_id': volume_id,
            'access_mode': 'rw', 'encrypted': False}
    data.update(extra)
    return {'driver_volume_type': 'iscsi', 'data': data}


def fc_info(volume_id=VOL, **extra):
    data = {'target_wwn': ['500a098280feeba5'], 'target_lun': 2, 'volume_id': volume_id,
            'initiator_target_map': {'21000024ff4b81c2': ['500a098280feeba5']},
            'access_mode': 'rw', 'encrypted': False}
    data.update(extra)
    return {'driver_volume_type': 'fibre_channel', 'data': data}


class FakeConnector:
    """os-brick's connector: connect_volume gives the path of the host device."""

    def __init__(self, registry, kind, multipath):
        self.registry, self.kind, self.multipath = registry, kind, multipath

    def connect_volume(self, props):
        self.registry.calls.append(('connect', self.kind, dict(props)))
        if self.registry.connect_error:
            raise self.registry.connect_error
        if self.kind == 'iscsi':
            path = ('/dev/disk/by-path/ip-%s-iscsi-%s-lun-%s'
                    % (props['target_portal'], props['target_iqn'], props['target_lun']))
        else:
            path = ('/dev/disk/by-path/pci-0000:05:00.2-fc-0x%s-lun-%s'
                    % (props['target_wwn'][0], props['target_lun']))
        return {'type': 'block', 'path': path, 'scsi_wwn': '360000000000000000e0000000001'}

    def disconnect_volume(self, props, device_info, force=False, ignore_errors=False):
        self.registry.calls.append(('disconnect', self.kind, dict(props), device_info))
        if self.registry.on_disconnect:
            self.registry.on_disconnect()
        if self.registry.disconnect_error:
            raise self.registry.disconnect_error


class Connectors:
    def __init__(self):
        self.calls = []
        self.connect_error = None
        self.disconnect_error = None
        self.on_disconnect = None

    def __call__(self, kind, multipath):
        return FakeConnector(self, kind, multipath)

    def of(self, what):
        return [c for c in self.calls if c[0] == what]


@pytest.fixture
def lib(monkeypatch):
    fake = fake_libvirt.FakeLibvirt()
    monkeypatch.setattr(host, 'libvirt', fake)
    return fake


@pytest.fixture
def guest(lib):
    """The instance's domain, running and persistent."""
    return lib.define(INSTANCE_UUID, sample('domain.xml'))


@pytest.fixture
def connectors(monkeypatch):
    registry = Connectors()
    monkeypatch.setattr(brick, 'connector_for', registry)
    return registry


@pytest.fixture
def make_driver(conf, lib, connectors):
    conf.set_override('driver', 'libvirt', group='virt')
    conf.set_override('device_detach_timeout', 1, group='libvirt')
    conf.set_override('device_detach_attempts', 2, group='libvirt')
    return lambda: driver_mod.LibvirtDriver(conf)


@pytest.fixture
def driver(make_driver, guest):
    return make_driver()


def attached_disk(guest, which='live'):
    """The <disk> elements of volumes (with a serial) in the guest's XML."""
    root = ET.fromstring(guest.xml(which))
    return [d for d in root.iterfind('./devices/disk') if d.findtext('serial')]


def sent_disks(guest):
    """The disk XML the driver asked libvirt to attach, in order."""
    return [xml for verb, xml, flags in guest.requests if verb == 'attach']

"""The driver against real libvirt-python and libvirt's in-process ``test:///default``
hypervisor (no daemon): libvirt's own parser takes the disks we send, the metadata
calls behave as the fake says, and records, attachments and names come out of
libvirt's real XML. (The test hypervisor cannot hot-plug: attach and detach
themselves are covered against the fake.)"""
import uuid
from xml.etree import ElementTree as ET

import pytest

from attachworker.virt.libvirt import driver as driver_mod
from attachworker.virt.libvirt import errors
from attachworker.virt.libvirt import records
from tests.unit.virt.conftest import VOL
from tests.unit.virt.conftest import rbd_info
from tests.unit.virt.conftest import sample

libvirt = pytest.importorskip('libvirt')

SAMPLES = ['rbd_auth.xml', 'rbd_conf_secret.xml', 'rbd_noauth.xml', 'rbd_ro_shareable.xml',
           'iscsi.xml', 'fibre_channel_virtio.xml']


def domain_xml(instance_uuid, extra_disks=()):
    xml = sample('domain.xml').replace("<domain type='kvm'>", "<domain type='test'>")
    xml = xml.replace('8f0e3c4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b', instance_uuid)
    xml = xml.replace('instance-00000001', 'instance-' + instance_uuid[:8])
    disks = ''.join(d[d.index('<disk'):] for d in extra_disks)
    return xml.replace('<serial type=', disks + '<serial type=')


@pytest.fixture
def conn():
    conn = libvirt.open('test:///default')
    yield conn
    conn.close()


@pytest.fixture
def define(conn):
    defined = []

    def define(extra_disks=(), start=True):
        instance_uuid = str(uuid.uuid4())
        dom = conn.defineXML(domain_xml(instance_uuid, extra_disks))
        if start:
            dom.create()
        defined.append(dom)
        return instance_uuid, dom
    yield define
    for dom in defined:
        if dom.isActive():
            dom.destroy()
        dom.undefine()


@pytest.fixture
def real_driver(conf):
    conf.set_override('connection_uri', 'test:///default', group='libvirt')
    return driver_mod.LibvirtDriver(conf)


@pytest.mark.parametrize('name', SAMPLES)
def test_libvirt_parses_every_disk_we_send(define, name):
    _, dom = define([sample(name)], start=False)
    root = ET.fromstring(dom.XMLDesc(0))
    [back] = [d for d in root.iterfind('./devices/disk') if d.findtext('serial') == VOL]
    sent = ET.fromstring(sample(name))
    assert back.find('target').attrib == sent.find('target').attrib
    assert back.find('alias').get('name') == 'ua-' + VOL
    assert (back.find('auth') is None) == (sent.find('auth') is None)
    assert (back.find('readonly') is None) == (sent.find('readonly') is None)
    assert (back.find('shareable') is None) == (sent.find('shareable') is None)


def test_metadata_round_trip_and_removal(define):
    _, dom = define()
    assert records.read(dom) == {}
    records.write(dom, {VOL: {'flow': 'legacy', 'mode': 'ro', 'connection': {'name': 'p/i'}}})
    [(vol, rec)] = records.read(dom).items()
    assert (vol, rec['flow'], rec['mode'], rec['connection']) == (VOL, 'legacy', 'ro',
                                                                 {'name': 'p/i'})
    assert records.NAMESPACE in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    records.write(dom, {})
    records.write(dom, {})  # removing what is not there is fine
    assert records.read(dom) == {}


def test_attachments_and_names_from_libvirts_xml(define, real_driver):
    instance_uuid, dom = define([sample('rbd_auth.xml')])
    records.write(dom, {VOL: {'flow': 'attachments', 'attachment_id': 'a1', 'mode': 'rw',
                              'driver_volume_type': 'rbd', 'access_mode': 'rw'}})
    [att] = real_driver.get_attachments(instance_uuid)
    assert (att['volume_id'], att['mountpoint'], att['flow']) == (VOL, '/dev/sdb',
                                                                 'attachments')
    assert real_driver.reserve_device_name(instance_uuid, str(uuid.uuid4())) == '/dev/sdc'
    assert real_driver.reserve_device_name(instance_uuid, VOL) == '/dev/sdb'


def test_unknown_domain_and_unsupported_call(define, real_driver):
    with pytest.raises(errors.InstanceNotFound):
        real_driver.reserve_device_name(str(uuid.uuid4()), VOL)
    instance_uuid, _ = define()
    with pytest.raises(errors.LibvirtCallFailed, match='not supported') as caught:
        real_driver.attach_volume(None, rbd_info(), {'uuid': instance_uuid}, '/dev/sdb', VOL)
    assert caught.value.expected is True  # libvirt's refusal left the domain as it was
    assert real_driver.get_attachments(instance_uuid) == []

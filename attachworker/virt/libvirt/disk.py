"""A volume's ``<disk>`` from Cinder's connection info, and the disks of a domain.

``rbd`` volumes are network disks QEMU opens itself through librbd, authenticated
with a libvirt secret named by its UUID (the key stays in libvirt); ``iscsi`` and
``fibre_channel`` volumes are block disks on the host device os-brick connected.
Nothing secret from the connection info (CHAP passwords, a Ceph keyring) is ever
put into the XML: only the fields named here are read.
"""
import dataclasses
import re
from typing import Optional
from xml.etree import ElementTree as ET

from attachworker import exception
from attachworker.virt.libvirt import errors

NETWORK_TYPES = ('rbd',)
BLOCK_TYPES = ('iscsi', 'fibre_channel')
#: <target dev> names libvirt accepts for disks: sdb, vdc, hdd, xvde...
TARGET_RE = re.compile(r'(sd|vd|hd|xvd)[a-z]{1,3}')
BUS_PREFIX = {'scsi': 'sd', 'virtio': 'vd'}
#: Cinder's qos_specs keys that map to <iotune> children (front-end QoS).
IOTUNE_KEYS = ('total_bytes_sec', 'read_bytes_sec', 'write_bytes_sec', 'total_iops_sec',
               'read_iops_sec', 'write_iops_sec', 'total_bytes_sec_max',
               'read_bytes_sec_max', 'write_bytes_sec_max', 'total_iops_sec_max',
               'read_iops_sec_max', 'write_iops_sec_max', 'size_iops_sec')
ALIAS_PREFIX = 'ua-'  # a user alias: libvirt keeps it, and names it in device events


def alias_for(volume_id: str) -> str:
    return ALIAS_PREFIX + volume_id


def target_of(mountpoint: str) -> str:
    """'/dev/sdb' -> 'sdb'; anything else is refused."""
    name = mountpoint.rsplit('/', 1)[-1] if isinstance(mountpoint, str) else ''
    if not (isinstance(mountpoint, str) and mountpoint == '/dev/' + name
            and TARGET_RE.fullmatch(name)):
        raise exception.InvalidInput(
            reason='%r is not a disk device name such as /dev/sdb' % (mountpoint,))
    return name


def multiattach(connection_info: dict, record: Optional[dict]) -> bool:
    """Nova sets ``connection_info['multiattach']``; some backends put it in data."""
    data = connection_info.get('data') or {}
    return bool(connection_info.get('multiattach') or data.get('multiattach')
                or (record or {}).get('multiattach'))


def access_mode(connection_info: dict, volume_id: str) -> str:
    mode = (connection_info.get('data') or {}).get('access_mode') or 'rw'
    if mode not in ('rw', 'ro'):
        raise errors.UnsupportedVolume(volume_id=volume_id,
                                       reason='unknown access_mode %r' % (mode,))
    return mode


@dataclasses.dataclass
class Spec:
    """What the XML needs beyond the connection info."""

    volume_id: str
    target: str
    bus: str
    readonly: bool
    shareable: bool
    rbd_user: Optional[str] = None         # [libvirt] rbd_user
    rbd_secret_uuid: Optional[str] = None  # [libvirt] rbd_secret_uuid
    device_path: Optional[str] = None      # os-brick's path, for block types


def _rbd_source(disk: ET.Element, data: dict, spec: Spec) -> None:
    name = data.get('name')
    if not isinstance(name, str) or '/' not in name:
        raise errors.UnsupportedVolume(volume_id=spec.volume_id,
                                       reason='rbd connection info has no pool/image name')
    source = ET.SubElement(disk, 'source', protocol='rbd', name=name)
    hosts, ports = data.get('hosts') or [], data.get('ports') or []
    if len(ports) not in (0, len(hosts)):
        raise errors.UnsupportedVolume(volume_id=spec.volume_id,
                                       reason='rbd connection info has %d hosts but %d '
                                              'ports' % (len(hosts), len(ports)))
    for index, host in enumerate(hosts):
        element = ET.SubElement(source, 'host', name=str(host))
        if ports and ports[index] not in (None, ''):
            element.set('port', str(ports[index]))
    # Nova's rule: a configured secret forces authentication, with rbd_user if set.
    if spec.rbd_secret_uuid:
        username = spec.rbd_user or data.get('auth_username')
        secret_uuid, enabled = spec.rbd_secret_uuid, True
    else:
        username, secret_uuid = data.get('auth_username'), data.get('secret_uuid')
        enabled = bool(data.get('auth_enabled'))
    if not enabled:
        return
    if not username:
        raise errors.UnsupportedVolume(volume_id=spec.volume_id,
                                       reason='rbd authentication is enabled but no user is '
                                              'known (auth_username, [libvirt] rbd_user)')
    if not secret_uuid:
        raise errors.UnsupportedVolume(
            volume_id=spec.volume_id,
            reason='rbd authentication is enabled but no libvirt secret is known: set '
                   '[libvirt] rbd_secret_uuid (or rbd_secret_uuid in Cinder)')
    auth = ET.SubElement(disk, 'auth', username=str(username))
    ET.SubElement(auth, 'secret', type=data.get('secret_type') or 'ceph',
                  uuid=str(secret_uuid))


def build(connection_info: dict, spec: Spec) -> str:
    """The ``<disk>`` element of the volume, as text."""
    kind = connection_info.get('driver_volume_type')
    data = connection_info.get('data') or {}
    if kind not in NETWORK_TYPES + BLOCK_TYPES:
        raise errors.UnsupportedVolume(
            volume_id=spec.volume_id,
            reason='driver_volume_type %r is not supported (supported: %s)'
            % (kind, ', '.join(NETWORK_TYPES + BLOCK_TYPES)))
    if data.get('encrypted'):
        # Attaching the ciphertext raw would hand the guest an unreadable disk that
        # it could overwrite unencrypted.
        raise errors.UnsupportedVolume(volume_id=spec.volume_id,
                                       reason='encrypted volumes are not supported yet')
    network = kind in NETWORK_TYPES
    disk = ET.Element('disk', type='network' if network else 'block', device='disk')
    driver = ET.SubElement(disk, 'driver', name='qemu', type='raw', cache='none')
    if data.get('discard') is True:
        driver.set('discard', 'unmap')
    if not network:
        driver.set('io', 'native')
    if network:
        _rbd_source(disk, data, spec)
    else:
        if not spec.device_path:
            raise errors.UnsupportedVolume(volume_id=spec.volume_id,
                                           reason='os-brick returned no device path')
        ET.SubElement(disk, 'source', dev=spec.device_path)
    ET.SubElement(disk, 'target', dev=spec.target, bus=spec.bus)
    ET.SubElement(disk, 'serial').text = spec.volume_id
    qos = data.get('qos_specs')
    if isinstance(qos, dict) and any(key in qos for key in IOTUNE_KEYS):
        iotune = ET.SubElement(disk, 'iotune')
        for key in IOTUNE_KEYS:
            if qos.get(key) is not None:
                ET.SubElement(iotune, key).text = str(qos[key])
    if spec.readonly:
        ET.SubElement(disk, 'readonly')
    if spec.shareable:
        ET.SubElement(disk, 'shareable')
    ET.SubElement(disk, 'alias', name=alias_for(spec.volume_id))
    return ET.tostring(disk, encoding='unicode')


@dataclasses.dataclass
class Disk:
    """A ``<disk>`` of a domain's XML."""

    target: str
    bus: Optional[str]
    device: str                # disk, cdrom, lun, floppy
    source_type: Optional[str]  # network, block, file...
    serial: Optional[str]
    alias: Optional[str]
    readonly: bool
    shareable: bool
    protocol: Optional[str]
    source: Optional[str]      # rbd pool/image, block device or file path
    xml: str

    @property
    def mountpoint(self) -> str:
        return '/dev/' + self.target


def disks(domain_xml: Optional[str]) -> list[Disk]:
    """Every ``<disk>`` of the domain XML, in document order."""
    if not domain_xml:
        return []
    root = ET.fromstring(domain_xml)
    found = []
    for element in root.iterfind('./devices/disk'):
        target = element.find('target')
        if target is None or not target.get('dev'):
            continue
        source = element.find('source')
        alias = element.find('alias')
        serial = (element.findtext('serial') or '').strip() or None
        src = None
        if source is not None:
            src = source.get('name') or source.get('dev') or source.get('file')
        found.append(Disk(
            target=target.get('dev'), bus=target.get('bus'),
            device=element.get('device') or 'disk', source_type=element.get('type'),
            serial=serial, alias=alias.get('name') if alias is not None else None,
            readonly=element.find('readonly') is not None,
            shareable=element.find('shareable') is not None,
            protocol=source.get('protocol') if source is not None else None,
            source=src, xml=ET.tostring(element, encoding='unicode')))
    return found


def by_serial(domain_xml: Optional[str], volume_id: str) -> Optional[Disk]:
    return next((d for d in disks(domain_xml) if d.serial == volume_id), None)


def by_target(domain_xml: Optional[str], target: str) -> Optional[Disk]:
    return next((d for d in disks(domain_xml) if d.target == target), None)


def targets(*domain_xmls: Optional[str]) -> set:
    """Every target name the XMLs use: root disk, cdroms, volumes, all buses."""
    return {d.target for xml in domain_xmls for d in disks(xml)}

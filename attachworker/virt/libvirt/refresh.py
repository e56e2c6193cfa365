"""New connection info for an attached volume's disk of a stopped guest
(``attachworker-manage volume_attachment refresh``, attachworker.refresh).

The persistent definition is redefined with the disk rebuilt from the new
connection info, in one ``defineXML``: the disk never leaves the definition, so a
crash leaves the old disk or the new one, never none. Then the volume's record
gets the new attachment. Both are idempotent: a second call rebuilds the same disk.

Network disks (RBD) only: QEMU opens those itself, so the new monitors and auth
are all there is to change. A block disk (iSCSI, FC) would need its host
connection made again by os-brick first: refused, nothing changed.
"""
from typing import Any
import xml.etree.ElementTree as ET

from oslo_log import log as logging

from attachworker import exception
from attachworker.virt.libvirt import disk
from attachworker.virt.libvirt import guest as guest_mod
from attachworker.virt.libvirt import records

LOG = logging.getLogger(__name__)


def replace_disk(domain_xml: str, volume_id: str, disk_xml: str) -> str:
    """The domain XML with the volume's ``<disk>`` replaced by ``disk_xml``, in place."""
    root = ET.fromstring(domain_xml)
    devices = root.find('devices')
    for index, element in enumerate(list(devices)):
        if element.tag == 'disk' and (element.findtext('serial') or '').strip() == volume_id:
            devices.remove(element)
            devices.insert(index, ET.fromstring(disk_xml))
            return ET.tostring(root, encoding='unicode')
    raise exception.VolumeNotRefreshable(volume_id=volume_id, reason='no such disk')


def check(guest: guest_mod.Guest, volume_id: str) -> tuple:
    """(the persistent definition, the volume's disk in it) of a stopped ``guest`` whose
    disk of the volume a refresh can rebuild; else a definite refusal. Also what the
    pipeline asks before Cinder is told anything. The definition is read with its
    secrets (a console password): it is written back whole, and never logged."""
    if guest.active():
        raise exception.InstanceNotStopped(instance_uuid=guest.uuid, volume_id=volume_id,
                                           reason='its domain is running')
    config = guest.xml(inactive=True, secure=True)
    found = disk.by_serial(config, volume_id)
    if found is None:
        raise exception.VolumeNotRefreshable(
            volume_id=volume_id, reason='instance %s has no disk of it' % guest.uuid)
    if found.protocol not in disk.NETWORK_TYPES:
        raise exception.RefreshNotSupported(
            volume_id=volume_id, reason='a %s disk would need its host connection made '
            'again (only network disks: %s)' % (found.source_type,
                                                 ', '.join(disk.NETWORK_TYPES)))
    return config, found


def refresh(guest: guest_mod.Guest, settings: Any, connection_info: dict, mountpoint: str,
            volume_id: str, record: dict) -> None:
    """Rebuild the volume's disk of the stopped ``guest`` (``settings``: the
    ``[libvirt]`` options) at the same target, on the same bus."""
    config, found = check(guest, volume_id)
    if found.mountpoint != mountpoint:
        raise exception.VolumeNotRefreshable(
            volume_id=volume_id, reason='its disk is %s, not %s' % (found.mountpoint,
                                                                      mountpoint))
    kind = connection_info.get('driver_volume_type') if isinstance(connection_info,
                                                                    dict) else None
    if kind not in disk.NETWORK_TYPES:
        raise exception.RefreshNotSupported(
            volume_id=volume_id, reason='a %s disk would need its host connection made '
            'again (only network disks: %s)' % (kind, ', '.join(disk.NETWORK_TYPES)))
    access_mode = disk.access_mode(connection_info, volume_id)
    mode = 'ro' if 'ro' in (record.get('mode'), access_mode) else 'rw'
    new_disk = disk.build(connection_info, disk.Spec(
        volume_id=volume_id, target=found.target, bus=found.bus or settings.disk_bus,
        readonly=mode == 'ro', shareable=disk.multiattach(connection_info, record),
        rbd_user=settings.rbd_user, rbd_secret_uuid=settings.rbd_secret_uuid))
    guest.define(replace_disk(config, volume_id, new_disk))
    recs = guest.records()
    kept = dict(recs.get(volume_id) or {})
    kept.update({f: v for f, v in dict(record, mountpoint=mountpoint, mode=mode,
                                       access_mode=access_mode,
                                       driver_volume_type=kind).items()
                 if f in records.FIELDS},
                connection=records.connection_identity(connection_info, None, False))
    recs[volume_id] = kept
    guest.write_records(recs)
    LOG.info('Instance %(inst)s: disk %(dev)s of volume %(vol)s rebuilt for attachment '
             '%(att)s', {'inst': guest.uuid, 'dev': found.target, 'vol': volume_id,
                         'att': record.get('attachment_id')})

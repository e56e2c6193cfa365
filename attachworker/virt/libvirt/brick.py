"""Host storage connections for block volumes (iSCSI, Fibre Channel), by os-brick.

os-brick is optional: it is imported on the first block volume, so a host that
only attaches ``rbd`` volumes (QEMU opens those itself) does not need it. Tests
replace ``connector_for`` with a factory of their own.

A host connection is shared by every guest of the host that has the volume (a
multiattach volume attached to two instances here): it is undone only when no
domain of the host has the volume any more.
"""
from typing import Any

from oslo_utils import importutils
from oslo_utils import strutils

from attachworker.virt.libvirt import disk
from attachworker.virt.libvirt import errors

#: Cinder's driver_volume_type -> os-brick's protocol name.
PROTOCOLS = {'iscsi': 'ISCSI', 'fibre_channel': 'FIBRE_CHANNEL'}


def connector_for(driver_volume_type: str, use_multipath: bool) -> Any:
    """An os-brick connector for the volume type (connect_volume/disconnect_volume)."""
    protocol = PROTOCOLS[driver_volume_type]
    try:
        module = importutils.import_module('os_brick.initiator.connector')
    except ImportError as exc:
        raise errors.OsBrickMissing(protocol=driver_volume_type, reason=exc) from exc
    # os-brick runs its privileged commands through its privsep daemon, which it
    # starts with this helper.
    return module.InitiatorConnector.factory(protocol, 'sudo', use_multipath=use_multipath,
                                             device_scan_attempts=3)


def connect(kind: str, connection_info: dict, volume_id: str, multipath: bool) -> dict:
    """os-brick's device_info (``{'type': 'block', 'path': '/dev/disk/by-path/...'}``)."""
    connector = connector_for(kind, multipath)
    try:
        device_info = connector.connect_volume(connection_info['data'])
    except Exception as exc:
        raise errors.StorageConnectFailed(action='connect', volume_id=volume_id,
                                          reason=strutils.mask_password(str(exc))) from exc
    if not isinstance(device_info, dict) or not device_info.get('path'):
        raise errors.StorageConnectFailed(action='connect', volume_id=volume_id,
                                          reason='os-brick returned no device path')
    return device_info


def in_use(host: Any, volume_id: str) -> bool:
    """Does any domain of the host (running or not) have a disk of the volume?"""
    def scan(conn: Any) -> bool:
        return any(disk.by_serial(dom.XMLDesc(0), volume_id) is not None
                   for dom in conn.listAllDomains(0))
    return host.read('list the domains', scan)


def disconnect(host: Any, kind: str, identity: dict, volume_id: str) -> bool:
    """Undo connect from the record's identity; False when another guest still
    uses the volume (and the connection stays)."""
    if in_use(host, volume_id):
        return False
    props = {k: v for k, v in identity.items() if k not in ('device_info', 'use_multipath')}
    connector = connector_for(kind, bool(identity.get('use_multipath')))
    try:
        connector.disconnect_volume(props, identity.get('device_info'))
    except Exception as exc:
        raise errors.StorageConnectFailed(action='disconnect', volume_id=volume_id,
                                          reason=strutils.mask_password(str(exc))) from exc
    return True

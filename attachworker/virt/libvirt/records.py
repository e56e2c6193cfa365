"""How each volume was attached, kept in the domain's own metadata.

The records live in the domain XML, so they survive a restart of the worker, a
restart of libvirtd and a stop/start of the guest with no file of ours, and they
go away with the domain. One element in our namespace, written to the live and
the persistent definition alike::

    <metadata>
      <attachworker:volumes xmlns:attachworker="https://attachworker.example/xmlns/volumes/1">
        <volume id="b1204e0c-..." mountpoint="/dev/sdb" flow="attachments"
                attachment_id="5d77..." mode="rw" access_mode="rw"
                driver_volume_type="rbd" attached_at="2026-11-25T10:42:07.123456+00:00">
          <connection>{"name": "volumes/volume-b1204e0c-..."}</connection>
        </volume>
      </attachworker:volumes>
    </metadata>

``<connection>`` holds only the non-secret fields of ``CONNECTION_KEYS`` (what
identifies the storage, what os-brick needs to disconnect it): never a password,
a CHAP secret or a keyring. The disks are the truth (``<serial>`` is the volume
id); a record only says how the disk came to be there.
"""
import copy
import json
import re
from typing import Any
from typing import Optional
from xml.etree import ElementTree as ET

from oslo_log import log as logging
from oslo_utils import strutils

from attachworker.virt.libvirt import host

LOG = logging.getLogger(__name__)

NAMESPACE = 'https://attachworker.example/xmlns/volumes/1'
KEY = 'attachworker'
FIELDS = ('mountpoint', 'flow', 'attachment_id', 'mode', 'access_mode',
          'driver_volume_type', 'attached_at', 'multiattach')
#: connection_info['data'] fields that are kept (the rest may be secret).
CONNECTION_KEYS = (
    'name', 'hosts', 'ports', 'cluster_name',                          # rbd
    'target_portal', 'target_iqn', 'target_lun', 'target_portals',     # iscsi
    'target_iqns', 'target_luns', 'target_discovered',
    'target_wwn', 'target_wwns', 'initiator_target_map',               # fibre_channel
    'volume_id', 'device_path',
)
_SECRET_KEY = re.compile(r'key|secret|pass|token|cred', re.IGNORECASE)
_NOT_SECRET = ('auth_enabled', 'auth_username', 'auth_method', 'secret_type')
#: os-brick's device_info fields that are kept (for its disconnect_volume).
DEVICE_INFO_KEYS = ('type', 'path', 'scsi_wwn', 'multipath_id')


def connection_identity(connection_info: dict, device_info: Optional[dict],
                        multipath: bool) -> dict:
    data = connection_info.get('data') or {}
    kept = {k: data[k] for k in CONNECTION_KEYS if data.get(k) is not None}
    if device_info:
        kept['device_info'] = {k: device_info[k] for k in DEVICE_INFO_KEYS
                               if device_info.get(k) is not None}
        kept['use_multipath'] = multipath
    return kept


def masked(connection_info: Any) -> Any:
    """connection_info fit for a log line: passwords, secrets and keyrings are ***
    (oslo.utils' mask_dict_password alone leaves a Ceph ``keyring``)."""
    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: '***' if (isinstance(k, str) and _SECRET_KEY.search(k)
                                 and k not in _NOT_SECRET) else walk(v)
                    for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value
    return walk(strutils.mask_dict_password(copy.deepcopy(connection_info)))


def _local(tag: str) -> str:
    return tag.rsplit('}', 1)[-1]


def parse(text: Optional[str]) -> dict:
    """{volume id: record} from the metadata element's text."""
    if not text:
        return {}
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        LOG.error('Ignoring unreadable attachworker metadata (%s): attachments are listed '
                  'without their records', exc)
        return {}
    found = {}
    for element in root:
        if _local(element.tag) != 'volume' or not element.get('id'):
            continue
        record = {field: element.get(field) for field in FIELDS}
        record['multiattach'] = record['multiattach'] == 'true'
        connection = next((c for c in element if _local(c.tag) == 'connection'), None)
        try:
            record['connection'] = json.loads(connection.text or '{}') if (
                connection is not None) else {}
        except ValueError:
            record['connection'] = {}
        found[element.get('id')] = record
    return found


def format_records(records: dict) -> str:
    root = ET.Element('volumes')
    for volume_id in sorted(records):
        record = records[volume_id]
        element = ET.SubElement(root, 'volume', id=volume_id)
        for field in FIELDS:
            value = record.get(field)
            if field == 'multiattach':
                value = 'true' if value else None
            if value is not None:
                element.set(field, str(value))
        if record.get('connection'):
            ET.SubElement(element, 'connection').text = json.dumps(record['connection'],
                                                                   sort_keys=True)
    return ET.tostring(root, encoding='unicode')


def flags(dom: Any) -> int:
    """Affect the running guest and its persistent definition, whichever it has."""
    libvirt = host.libvirt
    value = 0
    if dom.isActive():
        value |= libvirt.VIR_DOMAIN_AFFECT_LIVE
    if dom.isPersistent():
        value |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
    return value


def read(dom: Any) -> dict:
    """The domain's records (of the running guest, else of its definition)."""
    libvirt = host.libvirt
    try:
        text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE,
                            libvirt.VIR_DOMAIN_AFFECT_CURRENT)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            return {}
        raise
    return parse(text)


def write(dom: Any, records: dict) -> None:
    """Replace the domain's records (none left: the element is removed)."""
    libvirt = host.libvirt
    if records:
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, format_records(records), KEY,
                        NAMESPACE, flags(dom))
    else:
        try:
            dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, None, None, NAMESPACE,
                            flags(dom))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN_METADATA:
                raise

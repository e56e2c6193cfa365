"""Host connector properties, in os-brick's format.

Cinder's ``initialize_connection`` / ``attachment_update`` take a *connector*: a
dict describing how this host reaches storage. Each protocol has a small reader
below; ``get_connector_properties`` merges them. As os-brick does, a key whose
source cannot be read (no iSCSI initiator installed, no FC HBA online...) is left
out rather than sent empty, so Cinder picks another protocol instead of failing.

Every path is read below ``[connector] host_root`` so tests and containers can
point it at a prepared tree.
"""
import os
import platform
import re
import sys
from typing import Optional

from oslo_config import cfg
from oslo_log import log as logging

from attachworker import exception

LOG = logging.getLogger(__name__)

ISCSI_INITIATOR_FILE = 'etc/iscsi/initiatorname.iscsi'
FC_HOST_DIR = 'sys/class/fc_host'
NVME_HOSTNQN_FILE = 'etc/nvme/hostnqn'
NVME_HOSTID_FILE = 'etc/nvme/hostid'
DMI_UUID_FILE = 'sys/class/dmi/id/product_uuid'


def _read_text(path: str) -> Optional[str]:
    """The stripped content of ``path``, or None when it is absent or unreadable.

    product_uuid is root-only on most distributions; a worker not running as root
    still serves the other protocols, so a permission error is not fatal.
    """
    try:
        with open(path, encoding='utf-8') as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        LOG.debug('Cannot read %(path)s: %(exc)s', {'path': path, 'exc': exc})
        return None


def read_iscsi_initiator(root: str) -> dict:
    """``{'initiator': 'iqn.2004-10.com.ubuntu:01:d3f1a2b4c5e6'}`` or ``{}``.

    The file holds comments and one ``InitiatorName=<iqn>`` line.
    """
    text = _read_text(os.path.join(root, ISCSI_INITIATOR_FILE)) or ''
    for line in text.splitlines():
        line = line.strip()
        if line.startswith('InitiatorName='):
            iqn = line.split('=', 1)[1].strip()
            if iqn:
                return {'initiator': iqn}
    return {}


def _host_number(path: str) -> int:
    # host10 must come after host2: sort by the number, not the string.
    digits = re.sub(r'\D', '', os.path.basename(path))
    return int(digits) if digits else -1


def _wwn(value: Optional[str]) -> Optional[str]:
    """'0x21000024FF4B81C2' -> '21000024ff4b81c2' (what Cinder drivers compare)."""
    if not value:
        return None
    value = value.lower()
    return value[2:] if value.startswith('0x') else value


def read_fc_wwns(root: str) -> dict:
    """``{'wwpns': ['21000024ff4b81c2'], 'wwnns': ['20000024ff4b81c2']}`` or ``{}``.

    Only HBA ports whose ``port_state`` is ``Online`` count: a port with its link
    down cannot be zoned to a target, so offering it to Cinder would only fail later.
    """
    fc_dir = os.path.join(root, FC_HOST_DIR)
    try:
        hosts = [os.path.join(fc_dir, name) for name in os.listdir(fc_dir)
                 if name.startswith('host')]
    except OSError:
        return {}
    wwpns, wwnns = [], []
    for host in sorted(hosts, key=_host_number):
        if _read_text(os.path.join(host, 'port_state')) != 'Online':
            continue
        wwpn = _wwn(_read_text(os.path.join(host, 'port_name')))
        wwnn = _wwn(_read_text(os.path.join(host, 'node_name')))
        if wwpn:
            wwpns.append(wwpn)
        if wwnn:
            wwnns.append(wwnn)
    result = {}
    if wwpns:
        result['wwpns'] = wwpns
    if wwnns:
        result['wwnns'] = wwnns
    return result


def read_nvme_ids(root: str) -> dict:
    """``{'nqn': 'nqn.2014-08.org.nvmexpress:uuid:4c4c4544-...',
    'nvme_hostid': '4c4c4544-0034-5310-8052-b4c04f4e4b32'}``, either key optional."""
    result = {}
    nqn = _read_text(os.path.join(root, NVME_HOSTNQN_FILE))
    if nqn:
        result['nqn'] = nqn
    hostid = _read_text(os.path.join(root, NVME_HOSTID_FILE))
    if hostid:
        result['nvme_hostid'] = hostid
    return result


def read_system_uuid(root: str) -> dict:
    """``{'system uuid': '4c4c4544-0034-5310-8052-b4c04f4e4b32'}`` or ``{}``.

    The key has a space in it: that is os-brick's spelling, and Cinder drivers
    (NVMe-oF ones) look it up by that name.
    """
    uuid = _read_text(os.path.join(root, DMI_UUID_FILE))
    return {'system uuid': uuid.lower()} if uuid else {}


def get_connector_properties(conf: cfg.ConfigOpts) -> dict:
    """This host's connector properties, e.g.::

        {'platform': 'x86_64', 'os_type': 'linux', 'ip': '192.0.2.10',
         'host': 'compute-1', 'multipath': False, 'enforce_multipath': False,
         'do_local_attach': False,
         'initiator': 'iqn.2004-10.com.ubuntu:01:d3f1a2b4c5e6',
         'wwpns': ['21000024ff4b81c2'], 'wwnns': ['20000024ff4b81c2'],
         'nqn': 'nqn.2014-08.org.nvmexpress:uuid:4c4c4544-...',
         'nvme_hostid': '4c4c4544-0034-5310-8052-b4c04f4e4b32',
         'system uuid': '4c4c4544-0034-5310-8052-b4c04f4e4b32'}

    Raises ConnectorError only when ``[connector] host_root`` is not a directory:
    that is a broken configuration, whereas a missing protocol is normal.
    """
    root = conf.connector.host_root
    if not os.path.isdir(root):
        raise exception.ConnectorError(
            reason='[connector] host_root %s is not a directory' % root)
    props = {
        'platform': platform.machine(),
        'os_type': sys.platform,
        'ip': conf.my_block_storage_ip,
        'host': conf.host,
        'multipath': conf.connector.use_multipath,
        'enforce_multipath': conf.connector.enforce_multipath,
        # attachworker attaches through the virt driver, never on this host itself.
        'do_local_attach': False,
    }
    for reader in (read_iscsi_initiator, read_fc_wwns, read_nvme_ids, read_system_uuid):
        props.update(reader(root))
    return props

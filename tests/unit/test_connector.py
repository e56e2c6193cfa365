"""Host connector properties, read from a prepared tree under tmp_path."""
import json
import os
from pathlib import Path
import platform
import subprocess
import sys

from oslo_config import cfg
import pytest

from attachworker import connector
from attachworker import exception
import attachworker.conf

IQN = 'iqn.2004-10.com.ubuntu:01:d3f1a2b4c5e6'
NQN = 'nqn.2014-08.org.nvmexpress:uuid:4c4c4544-0034-5310-8052-b4c04f4e4b32'
HOSTID = '4c4c4544-0034-5310-8052-b4c04f4e4b32'
SYSTEM_UUID = '4C4C4544-0034-5310-8052-B4C04F4E4B32'
BASE_KEYS = {'platform', 'os_type', 'ip', 'host', 'multipath', 'enforce_multipath',
             'do_local_attach'}


def write(root: Path, relpath: str, text: str) -> Path:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def fc_host(root: Path, name: str, state: str, wwpn: str, wwnn: str) -> None:
    base = 'sys/class/fc_host/%s/' % name
    write(root, base + 'port_state', state + '\n')
    write(root, base + 'port_name', wwpn + '\n')
    write(root, base + 'node_name', wwnn + '\n')


def full_tree(root: Path) -> Path:
    write(root, 'etc/iscsi/initiatorname.iscsi',
          '## DO NOT EDIT OR REMOVE THIS FILE!\n'
          '## If you remove this file, the iSCSI daemon will not start.\n'
          '#InitiatorName=iqn.1993-08.org.debian:01:commented-out\n'
          'InitiatorName=%s\n' % IQN)
    fc_host(root, 'host0', 'Online', '0x21000024FF4B81C2', '0x20000024FF4B81C2')
    fc_host(root, 'host1', 'Linkdown', '0x21000024ff4b81c3', '0x20000024ff4b81c3')
    write(root, 'etc/nvme/hostnqn', NQN + '\n')
    write(root, 'etc/nvme/hostid', HOSTID + '\n')
    write(root, 'sys/class/dmi/id/product_uuid', SYSTEM_UUID + '\n')
    return root


@pytest.fixture
def conf(tmp_path):
    conf = cfg.ConfigOpts()
    attachworker.conf.register_opts(conf)
    conf(args=[], default_config_files=[])
    conf.set_override('host', 'compute-1')
    conf.set_override('my_block_storage_ip', '192.0.2.10')
    conf.set_override('host_root', str(tmp_path), group='connector')
    return conf


def test_full_tree_gives_os_brick_properties(conf, tmp_path):
    full_tree(tmp_path)
    assert connector.get_connector_properties(conf) == {
        'platform': platform.machine(),
        'os_type': sys.platform,
        'ip': '192.0.2.10',
        'host': 'compute-1',
        'multipath': False,
        'enforce_multipath': False,
        'do_local_attach': False,
        'initiator': IQN,
        'wwpns': ['21000024ff4b81c2'],
        'wwnns': ['20000024ff4b81c2'],
        'nqn': NQN,
        'nvme_hostid': HOSTID,
        'system uuid': SYSTEM_UUID.lower(),
    }


def test_empty_tree_leaves_out_every_protocol_key(conf):
    assert set(connector.get_connector_properties(conf)) == BASE_KEYS


def test_iscsi_initiator_ignores_comments_and_blank_lines(tmp_path):
    write(tmp_path, 'etc/iscsi/initiatorname.iscsi',
          '\n# InitiatorName=iqn.wrong:commented\n\n  InitiatorName=%s  \n' % IQN)
    assert connector.read_iscsi_initiator(str(tmp_path)) == {'initiator': IQN}


def test_iscsi_file_without_initiator_line_gives_no_key(tmp_path):
    write(tmp_path, 'etc/iscsi/initiatorname.iscsi', '## only comments\nInitiatorName=\n')
    assert connector.read_iscsi_initiator(str(tmp_path)) == {}


def test_fc_only_online_ports_count_in_host_number_order(tmp_path):
    fc_host(tmp_path, 'host10', 'Online', '0x2100000000000010', '0x2000000000000010')
    fc_host(tmp_path, 'host1', 'Linkdown', '0x2100000000000001', '0x2000000000000001')
    fc_host(tmp_path, 'host2', 'Online', '0x21000024FF4B81C2', '0x20000024FF4B81C2')
    assert connector.read_fc_wwns(str(tmp_path)) == {
        'wwpns': ['21000024ff4b81c2', '2100000000000010'],
        'wwnns': ['20000024ff4b81c2', '2000000000000010'],
    }


def test_fc_keys_absent_when_no_port_is_online(conf, tmp_path):
    fc_host(tmp_path, 'host0', 'Linkdown', '0x21000024ff4b81c2', '0x20000024ff4b81c2')
    fc_host(tmp_path, 'host1', 'Offline', '0x21000024ff4b81c3', '0x20000024ff4b81c3')
    props = connector.get_connector_properties(conf)
    assert 'wwpns' not in props
    assert 'wwnns' not in props


def test_nvme_keys_are_independent(conf, tmp_path):
    write(tmp_path, 'etc/nvme/hostnqn', NQN + '\n')
    props = connector.get_connector_properties(conf)
    assert props['nqn'] == NQN
    assert 'nvme_hostid' not in props


def test_unreadable_file_is_left_out_not_raised(conf, tmp_path):
    # A directory where a file should be fails to read (as root too, unlike chmod).
    (tmp_path / 'sys/class/dmi/id/product_uuid').mkdir(parents=True)
    write(tmp_path, 'etc/nvme/hostid', HOSTID)
    props = connector.get_connector_properties(conf)
    assert 'system uuid' not in props
    assert props['nvme_hostid'] == HOSTID


@pytest.mark.skipif(os.geteuid() == 0, reason='root reads a mode-000 file anyway')
def test_permission_denied_is_left_out(conf, tmp_path):
    path = write(tmp_path, 'sys/class/dmi/id/product_uuid', SYSTEM_UUID)
    path.chmod(0)
    assert 'system uuid' not in connector.get_connector_properties(conf)


def test_multipath_flags_follow_configuration(conf):
    conf.set_override('use_multipath', True, group='connector')
    conf.set_override('enforce_multipath', True, group='connector')
    props = connector.get_connector_properties(conf)
    assert props['multipath'] is True
    assert props['enforce_multipath'] is True


def test_missing_host_root_is_a_configuration_error(conf, tmp_path):
    conf.set_override('host_root', str(tmp_path / 'nope'), group='connector')
    with pytest.raises(exception.ConnectorError, match='nope'):
        connector.get_connector_properties(conf)


def test_host_root_that_is_a_file_is_a_configuration_error(conf, tmp_path):
    conf.set_override('host_root', str(write(tmp_path, 'file', 'x')), group='connector')
    with pytest.raises(exception.ConnectorError):
        connector.get_connector_properties(conf)


def _manage(config_file: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / 'attachworker-manage'
    assert script.exists(), 'run ".venv/bin/pip install -e ." first'
    return subprocess.run([str(script), '--config-file', str(config_file), 'connector'],
                          capture_output=True, text=True, timeout=60)


def test_manage_connector_prints_sorted_json(tmp_path):
    root = full_tree(tmp_path / 'root')
    config = write(tmp_path, 'attachworker.conf',
                   '[DEFAULT]\nhost = compute-7\nmy_block_storage_ip = 198.51.100.7\n'
                   '[connector]\nhost_root = %s\nuse_multipath = true\n' % root)
    result = _manage(config)
    assert result.returncode == 0, result.stderr
    props = json.loads(result.stdout)
    assert props['host'] == 'compute-7'
    assert props['ip'] == '198.51.100.7'
    assert props['multipath'] is True
    assert props['initiator'] == IQN
    assert props['wwpns'] == ['21000024ff4b81c2']
    assert list(props) == sorted(props)


def test_manage_connector_reports_bad_host_root_without_traceback(tmp_path):
    config = write(tmp_path, 'attachworker.conf',
                   '[connector]\nhost_root = %s\n' % (tmp_path / 'missing'))
    result = _manage(config)
    assert result.returncode == 1
    assert result.stdout == ''
    assert 'host_root' in result.stderr
    assert 'Traceback' not in result.stderr

"""tools/lib/rabbit_cluster*.py without starting RabbitMQ: where things go, what the
nodes run with, and that nothing of anybody else's is taken for a node.

Each test loads the module afresh with ATTACHWORKER_CLUSTER_HOME in its tmp_path.
"""
import importlib.util
import os
import pathlib
import sys

import pytest

LIB = pathlib.Path(__file__).resolve().parents[3] / 'tools' / 'lib'


@pytest.fixture
def rc(tmp_path, monkeypatch):
    monkeypatch.setenv('ATTACHWORKER_CLUSTER_HOME', str(tmp_path / 'cluster'))
    monkeypatch.setenv('ATTACHWORKER_RABBITMQ_SBIN', str(tmp_path / 'sbin'))
    monkeypatch.syspath_prepend(str(LIB))
    for name in ('rabbit_cluster', 'rabbit_cluster_node'):
        sys.modules.pop(name, None)
    spec = importlib.util.spec_from_file_location('rabbit_cluster', LIB / 'rabbit_cluster.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop('rabbit_cluster_node', None)


def test_transport_url_names_the_three_loopback_nodes(rc):
    assert rc.transport_url('v1') == (
        'rabbit://guest:guest@127.0.0.1:5682,guest:guest@127.0.0.1:5683,'
        'guest:guest@127.0.0.1:5684/v1')
    assert [n.name for n in rc.NODES] == ['awc1@localhost', 'awc2@localhost',
                                          'awc3@localhost']
    assert rc.node('awc2') is rc.node('awc2@localhost') is rc.NODES[1]


def test_a_node_runs_with_its_own_env_and_config_only(rc, tmp_path, monkeypatch):
    monkeypatch.setenv('RABBITMQ_NODENAME', 'rabbit@localhost')   # the machine's broker's
    monkeypatch.setenv('ERL_EPMD_PORT', '4369')
    n = rc.NODES[2]
    env = n.env()
    home = str(tmp_path / 'cluster')
    assert env['RABBITMQ_NODENAME'] == 'awc3@localhost'
    assert env['ERL_EPMD_PORT'] == '4370' and env['HOME'] == home
    assert (env['RABBITMQ_NODE_PORT'], env['RABBITMQ_DIST_PORT']) == ('5684', '25684')
    for key in ('RABBITMQ_CONFIG_FILE', 'RABBITMQ_CONF_ENV_FILE', 'RABBITMQ_MNESIA_BASE',
                'RABBITMQ_LOG_BASE', 'RABBITMQ_PID_FILE', 'RABBITMQ_ENABLED_PLUGINS_FILE',
                'RABBITMQ_ADVANCED_CONFIG_FILE'):
        assert env[key].startswith(home + '/'), key
    n.write_config()
    conf = pathlib.Path(env['RABBITMQ_CONFIG_FILE']).read_text()
    assert 'listeners.tcp.1 = 127.0.0.1:5684' in conf
    assert 'vm_memory_high_watermark.absolute' in conf and 'disk_free_limit' in conf
    assert '-start_epmd false' in env['RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS']


def test_a_pid_file_of_a_process_that_is_not_a_node_counts_for_nothing(rc):
    os.makedirs(os.path.dirname(rc.NODES[0].pidfile))
    with open(rc.NODES[0].pidfile, 'w') as f:
        f.write('%d\n' % os.getpid())   # alive, but not ours: pytest carries no marker
    assert rc.states() == {n.name: 'stopped' for n in rc.NODES}
    assert not rc.is_up()
    assert rc.down(log=lambda _: None) is False   # and nothing was signalled
    assert os.getpid() > 0


def test_a_cli_that_does_not_answer_is_a_cluster_error(rc, tmp_path):
    sbin = tmp_path / 'sbin'
    sbin.mkdir()
    (sbin / 'rabbitmqctl').write_text('#!/bin/sh\nsleep 5\n')
    (sbin / 'rabbitmqctl').chmod(0o755)
    with pytest.raises(rc.ClusterError, match='no answer within'):
        rc.NODES[0].ctl('cluster_status', timeout=0.3)

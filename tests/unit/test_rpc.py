"""RPC: a cast through rpcapi reaches the manager over oslo.messaging's fake:// driver.

The RPC client reads option groups registered only on the global cfg.CONF
(DESIGN.md's known trap), so these tests use cfg.CONF and reset it afterwards.
"""
import time

import oslo_messaging as messaging
import pytest

from attachworker import rpc
from attachworker import rpcapi

GOOD = '8f0e3c4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b'


def wait_for(notifications, count, timeout=10):
    deadline = time.monotonic() + timeout
    while len(notifications()) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return notifications()


def test_cast_through_rpcapi_attaches(global_conf, server, cinder_mock, ctxt, notifications):
    transport, _ = server
    api = rpcapi.ComputeAPI(global_conf, transport)
    api.attach_volume(ctxt, 'compute-unit', {'uuid': GOOD}, cinder_mock.volume_id, '/dev/vdb')
    published = wait_for(notifications, 2)
    assert [e for e, _, _, _ in published] == ['instance.volume_attach.start',
                                               'instance.volume_attach.end']
    # the context crossed the wire: same request id, and the caller's token reached Cinder
    assert published[-1][2]['request_id'] == ctxt.request_id
    assert cinder_mock.m.request_history[-1].headers['X-Auth-Token'] == ctxt.auth_token


def test_version_cap_refuses_a_newer_cast(global_conf, ctxt):
    global_conf.set_override('compute', '0.9', group='upgrade_levels')
    transport = messaging.get_rpc_transport(global_conf, url='fake:///')
    api = rpcapi.ComputeAPI(global_conf, transport)
    with pytest.raises(messaging.RPCVersionCapError):
        api.attach_volume(ctxt, 'compute-unit', {'uuid': GOOD}, GOOD)


def test_unsupported_version_gets_an_error_notification(global_conf, server, ctxt,
                                                        notifications, caplog):
    transport, _ = server
    client = messaging.get_rpc_client(
        transport, messaging.Target(topic=rpc.TOPIC, server='compute-unit', version='2.0'),
        serializer=rpc.RequestContextSerializer())
    client.cast(ctxt, 'attach_volume', instance={'uuid': GOOD}, volume_id=GOOD)
    published = wait_for(notifications, 1)
    event, priority, data, _ = published[0]
    assert (event, priority) == ('instance.volume_attach.error', 'ERROR')
    assert data['fault']['step'] == 'rpc'
    assert data['fault']['exception'] == 'UnsupportedVersion'
    assert data['request_id'] == ctxt.request_id
    assert 'Rejected RPC attach_volume version 2.0: UnsupportedVersion' in caplog.text


def test_unknown_method_is_logged_and_the_server_goes_on(global_conf, server, cinder_mock,
                                                         ctxt, notifications, caplog):
    transport, _ = server
    client = messaging.get_rpc_client(
        transport, messaging.Target(topic=rpc.TOPIC, server='compute-unit'),
        serializer=rpc.RequestContextSerializer())
    client.cast(ctxt, 'format_disk', volume_id=GOOD)
    rpcapi.ComputeAPI(global_conf, transport).attach_volume(
        ctxt, 'compute-unit', {'uuid': GOOD}, cinder_mock.volume_id, '/dev/vdb')
    published = wait_for(notifications, 2)
    assert [e for e, _, _, _ in published][-1] == 'instance.volume_attach.end'
    assert 'Rejected RPC format_disk version 1.0: NoSuchMethod' in caplog.text


def test_detach_needs_1_1_and_a_cap_of_1_0_refuses_it(global_conf, ctxt):
    global_conf.set_override('compute', '1.0', group='upgrade_levels')
    transport = messaging.get_rpc_transport(global_conf, url='fake:///')
    api = rpcapi.ComputeAPI(global_conf, transport)
    with pytest.raises(messaging.RPCVersionCapError):
        api.detach_volume(ctxt, 'compute-unit', {'uuid': GOOD}, GOOD)
    assert api.client.can_send_version('1.0')  # attach_volume still goes


def test_detach_cast_reaches_the_worker(global_conf, server, cinder_mock, ctxt,
                                        notifications):
    transport, _ = server
    rpcapi.ComputeAPI(global_conf, transport).detach_volume(
        ctxt, 'compute-unit', {'uuid': GOOD}, cinder_mock.volume_id)
    published = wait_for(notifications, 2)
    assert [e for e, _, _, _ in published] == ['instance.volume_detach.start',
                                               'instance.volume_detach.end']

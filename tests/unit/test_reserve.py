"""reserve_block_device_name (RPC 1.2, a call) over oslo.messaging's fake:// driver."""
import threading

import oslo_messaging as messaging
import pytest

from attachworker import exception
from attachworker import rpcapi
from attachworker import virt

INSTANCE = {'uuid': '8f0e3c4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b'}
VOL_A = 'b1204e0c-1111-4e5f-8a9b-0c1d2e3f4a5b'
VOL_B = 'b1204e0c-2222-4e5f-8a9b-0c1d2e3f4a5b'


@pytest.fixture
def api(global_conf, server):
    transport, _ = server
    return rpcapi.ComputeAPI(global_conf, transport)


#: What a refused call raises: over rabbit a RemoteError naming the exception; the
#: fake:// driver hands the exception itself back.
REFUSED = (messaging.RemoteError, exception.AttachWorkerException)


def kind(excinfo):
    error = excinfo.value
    return error.exc_type if isinstance(error, messaging.RemoteError) else type(error).__name__


def text(excinfo):
    error = excinfo.value
    return error.value if isinstance(error, messaging.RemoteError) else str(error)


def reserve(api, ctxt, volume_id, **kwargs):
    return api.reserve_block_device_name(ctxt, 'compute-unit', INSTANCE, volume_id,
                                         timeout=10, **kwargs)


def test_names_are_handed_out_in_order_and_never_twice(api, ctxt, conf):
    assert reserve(api, ctxt, VOL_A) == '/dev/vdb'
    assert reserve(api, ctxt, VOL_B) == '/dev/vdc'
    held = sorted((r['volume_id'], r['device'])
                  for r in virt.load_driver(conf).reservations())
    assert held == [(VOL_A, '/dev/vdb'), (VOL_B, '/dev/vdc')]


def test_a_volume_reserved_or_attached_already_is_refused_with_a_remote_error(
        api, ctxt, conf):
    reserve(api, ctxt, VOL_A)
    with pytest.raises(REFUSED) as refused:
        reserve(api, ctxt, VOL_A)
    assert kind(refused) == 'VolumeAlreadyAttached'
    assert 'reserved for' in text(refused)
    driver = virt.load_driver(conf)
    driver.attach_volume(None, {'driver_volume_type': 'iscsi', 'data': {}}, INSTANCE,
                         '/dev/vdb', VOL_A)
    with pytest.raises(REFUSED) as refused:
        reserve(api, ctxt, VOL_A)
    assert 'attached to' in text(refused)


def test_a_taken_device_and_bad_arguments_are_refused(api, ctxt):
    reserve(api, ctxt, VOL_A, device='/dev/vdd')
    with pytest.raises(REFUSED) as refused:
        reserve(api, ctxt, VOL_B, device='/dev/vdd')
    assert kind(refused) == 'DeviceInUse'
    for bad in (dict(device='/dev/../x'), dict(multiattach='yes'), dict(tag=['x'])):
        with pytest.raises(REFUSED) as refused:
            reserve(api, ctxt, VOL_B, **bad)
        assert kind(refused) == 'InvalidInput'


def test_multiattach_is_refused_when_the_driver_cannot_share(global_conf, make_manager,
                                                             ctxt, conf):
    from attachworker import rpc
    driver = virt.load_driver(conf)
    driver.capabilities = dict(driver.capabilities, supports_multiattach=False)
    transport = messaging.get_rpc_transport(global_conf, url='fake:///')
    manager = make_manager(virt_driver=driver)
    srv = rpc.get_rpc_server(transport, 'compute-unit', manager, manager.reject)
    srv.start()
    try:
        with pytest.raises(REFUSED) as refused:
            reserve(rpcapi.ComputeAPI(global_conf, transport), ctxt, VOL_A, multiattach=True)
        assert kind(refused) == 'MultiattachNotSupported'
    finally:
        srv.stop()
        srv.wait()
        transport.cleanup()


def test_a_cap_of_1_1_refuses_the_call(global_conf, ctxt):
    global_conf.set_override('compute', '1.1', group='upgrade_levels')
    api = rpcapi.ComputeAPI(global_conf, messaging.get_rpc_transport(global_conf,
                                                                    url='fake:///'))
    with pytest.raises(messaging.RPCVersionCapError):
        reserve(api, ctxt, VOL_A)


def test_concurrent_calls_never_get_the_same_name(api, ctxt):
    names, volumes = [], ['b1204e0c-%04d-4e5f-8a9b-0c1d2e3f4a5b' % i for i in range(12)]

    def one(volume_id):
        names.append(reserve(api, ctxt, volume_id))
    threads = [threading.Thread(target=one, args=(v,)) for v in volumes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(names) == 12 and len(set(names)) == 12


def test_an_attach_uses_the_reservation_and_an_unused_one_expires(
        api, ctxt, conf, server, cinder_mock, notifications):
    _, manager = server
    device = reserve(api, ctxt, cinder_mock.volume_id)
    manager.attach_volume(ctxt, INSTANCE, cinder_mock.volume_id, device)
    [held] = virt.load_driver(conf).get_attachments(INSTANCE['uuid'])
    assert held['mountpoint'] == device
    assert virt.load_driver(conf).reservations() == []  # used, so gone
    # one nobody uses: released once [worker] reservation_timeout has passed
    reserve(api, ctxt, VOL_B)
    assert manager.expire_reservations() == 0
    conf.set_override('reservation_timeout', 1, group='worker')
    driver = virt.load_driver(conf)

    def aged(state):
        state['instances'][INSTANCE['uuid']]['reserved_at'][VOL_B] = 0.0
    driver._update(INSTANCE['uuid'], aged, VOL_B)
    assert manager.expire_reservations() == 1
    assert virt.load_driver(conf).reservations() == []

"""The Cinder stand-in, driven by python-cinderclient itself (no broker needed)."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

from cinderclient import api_versions
from cinderclient import client as cinder_client
from cinderclient import exceptions as cinder_exc
from keystoneauth1 import service_token
from keystoneauth1 import session as ks_session
from keystoneauth1 import token_endpoint
import pytest

from tests.functional.fake_cinder import FakeCinder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROJECT = '6f70656e737461636b20697320636f6f'
INSTANCE = '8f0e3c4a-5b1d-4c6e-9f2a-7d3b1e0c4a5b'
CONNECTOR = {'initiator': 'iqn.1993-08.org.debian:01:cad181614cec', 'ip': '127.0.0.1',
             'host': 'compute-1', 'platform': 'x86_64', 'os_type': 'linux',
             'multipath': False, 'mountpoint': '/dev/vdb'}


@pytest.fixture
def server():
    fake = FakeCinder(chap_password='s3cret-chap')
    fake.start()
    yield fake
    fake.stop()


def make_client(server, version='3.44', token='tok', project=PROJECT, service=None, **kw):
    endpoint = server.url + '/v3' + ('/' + project if project else '')
    auth = token_endpoint.Token(endpoint, token)
    if service:
        auth = service_token.ServiceTokenAuthWrapper(
            user_auth=auth, service_auth=token_endpoint.Token(None, service))
    return cinder_client.Client(version, session=ks_session.Session(auth=auth), **kw)


def calls(server):
    return [(c.method, c.path) for c in server.requests]


# --- version discovery --------------------------------------------------------------------
def test_discovery_offers_3_71(server):
    probe = make_client(server, '3.0')
    assert api_versions.get_highest_version(probe) == api_versions.APIVersion('3.71')
    wanted = api_versions.APIVersion('3.71')
    assert api_versions.discover_version(probe, wanted) == wanted
    assert cinder_client.get_server_version(server.url + '/v3/' + PROJECT) == (
        api_versions.APIVersion('3.0'), api_versions.APIVersion('3.71'))
    assert calls(server) == [('GET', '/')] * 3


def test_lowered_max_version_is_discovered_and_enforced(server):
    server.max_version = '3.27'
    probe = make_client(server, '3.0')
    assert api_versions.get_highest_version(probe) == api_versions.APIVersion('3.27')
    assert api_versions.discover_version(
        probe, api_versions.APIVersion('3.44')) == api_versions.APIVersion('3.27')
    with pytest.raises(cinder_exc.NotAcceptable) as exc:
        make_client(server, '3.44').volumes.get(server.add_volume())
    assert exc.value.code == 406


def test_v3_version_document_and_echoed_microversion(server):
    resp, body = make_client(server, '3.0').client.get_with_base_url('v3/')
    assert resp.status_code == 200 and body['versions'][0]['version'] == '3.71'
    resp, _ = make_client(server, '3.48').client.get('/volumes/%s' % server.add_volume())
    assert resp.headers['OpenStack-API-Version'] == 'volume 3.48'
    assert resp.headers['x-openstack-request-id'].startswith('req-')


# --- attachments flow ---------------------------------------------------------------------
def test_attachments_flow_ends_in_use(server):
    vol = server.add_volume(az='az1', project_id=PROJECT)
    cinder = make_client(server, '3.44')

    att = cinder.attachments.create(vol, None, INSTANCE)
    assert att['status'] == 'reserved' and att['connection_info'] == {}
    assert server.volume(vol)['status'] == 'reserved'

    updated = cinder.attachments.update(att['id'], CONNECTOR).to_dict()
    info = updated['connection_info']
    # Cinder stores it flat: the driver's data plus driver_volume_type and attachment_id.
    assert info['driver_volume_type'] == 'iscsi' and 'data' not in info
    assert info['attachment_id'] == att['id']
    assert info['auth_method'] == 'CHAP' and info['auth_password'] == 's3cret-chap'
    assert info['target_portal'] == '127.0.0.1:3260' and info['access_mode'] == 'rw'
    assert updated['status'] == 'attaching'
    assert server.volume(vol)['status'] == 'attaching'

    cinder.attachments.complete(att['id'])
    shown = cinder.volumes.get(vol).to_dict()
    assert (shown['status'], shown['availability_zone']) == ('in-use', 'az1')
    assert shown['os-vol-tenant-attr:tenant_id'] == PROJECT
    assert 'attach_status' not in shown  # Cinder's volume view has none
    assert shown['attachments'] == [{
        'server_id': INSTANCE, 'attachment_id': att['id'], 'host_name': 'compute-1',
        'device': '/dev/vdb', 'attached_at': server.attachment(att['id'])['attach_time'],
        'volume_id': vol, 'id': vol}]
    assert server.volume(vol)['attach_status'] == 'attached'
    assert cinder.attachments.show(att['id']).status == 'attached'

    path = '/attachments/' + att['id']
    assert calls(server) == [('POST', '/attachments'), ('PUT', path),
                             ('POST', path + '/action'), ('GET', '/volumes/' + vol),
                             ('GET', path)]
    first = server.requests[0]
    assert first.body == {'attachment': {'volume_uuid': vol, 'connector': None,
                                         'instance_uuid': INSTANCE}}
    assert first.headers['openstack-api-version'] == 'volume 3.44'
    assert first.headers['X-Auth-Token'] == 'tok'
    assert server.requests[2].body == {'os-complete': None}


def test_attachment_delete_restores_available(server):
    vol = server.add_volume()
    cinder = make_client(server, '3.44')
    att = cinder.attachments.create(vol, None, INSTANCE)
    cinder.attachments.update(att['id'], CONNECTOR)
    cinder.attachments.delete(att['id'])
    state = server.volume(vol)
    assert (state['status'], state['attach_status'], state['attachments']) == (
        'available', 'detached', [])
    assert cinder.volumes.get(vol).attachments == []


def test_multiattach_keeps_in_use_until_last_attachment_goes(server):
    vol = server.add_volume(multiattach=True)
    cinder = make_client(server, '3.54')
    ids = []
    for instance in (INSTANCE, str(uuid.uuid4())):
        att = cinder.attachments.create(vol, CONNECTOR, instance, mode='ro')
        assert att['connection_info']['access_mode'] == 'ro'
        cinder.attachments.complete(att['id'])
        ids.append(att['id'])
    assert server.requests[0].body['attachment']['mode'] == 'ro'
    assert len(cinder.volumes.get(vol).attachments) == 2
    _, body = cinder.attachments.delete(ids[0])
    assert [a['id'] for a in body['attachments']] == [ids[1]]
    assert server.volume(vol)['status'] == 'in-use'
    cinder.attachments.delete(ids[1])
    assert server.volume(vol)['status'] == 'available'


# --- legacy flow ----------------------------------------------------------------------------
def test_legacy_flow_ends_in_use(server):
    server.max_version = '3.27'
    vol = server.add_volume()
    cinder = make_client(server, '3.0')

    cinder.volumes.reserve(vol)
    assert server.volume(vol)['status'] == 'attaching'
    info = cinder.volumes.initialize_connection(vol, CONNECTOR)
    assert info['driver_volume_type'] == 'iscsi'
    data = info['data']
    assert (data['auth_method'], data['auth_password']) == ('CHAP', 's3cret-chap')
    assert data['target_iqn'].endswith(vol) and data['target_lun'] == 1
    cinder.volumes.attach(vol, INSTANCE, '/dev/vdb', mode='rw')

    state = server.volume(vol)
    assert (state['status'], state['attach_status']) == ('in-use', 'attached')
    (att,) = state['attachments']
    assert (att['instance_uuid'], att['mountpoint'], att['attach_mode']) == (
        INSTANCE, '/dev/vdb', 'rw')
    assert cinder.volumes.get(vol).attachments[0]['attachment_id'] == att['id']

    action = '/volumes/%s/action' % vol
    assert [(c.method, c.path, c.body) for c in server.requests] == [
        ('POST', action, {'os-reserve': None}),
        ('POST', action, {'os-initialize_connection': {'connector': CONNECTOR}}),
        ('POST', action, {'os-attach': {'mountpoint': '/dev/vdb', 'mode': 'rw',
                                        'instance_uuid': INSTANCE}}),
        ('GET', '/volumes/' + vol, None)]
    assert 'OpenStack-API-Version' not in server.requests[0].headers  # 3.0: no header


def test_legacy_undo_restores_available(server):
    vol = server.add_volume()
    cinder = make_client(server, '3.0')
    cinder.volumes.reserve(vol)
    cinder.volumes.initialize_connection(vol, CONNECTOR)
    cinder.volumes.terminate_connection(vol, CONNECTOR)  # unreserves too, as Cinder's
    assert server.volume(vol)['status'] == 'available'
    cinder.volumes.unreserve(vol)  # nothing left to undo: still 202
    assert server.volume(vol)['status'] == 'available'

    cinder.volumes.reserve(vol)
    cinder.volumes.attach(vol, INSTANCE, '/dev/vdb')
    cinder.volumes.begin_detaching(vol)
    assert server.volume(vol)['status'] == 'detaching'
    cinder.volumes.roll_detaching(vol)
    assert server.volume(vol)['status'] == 'in-use'
    cinder.volumes.begin_detaching(vol)
    cinder.volumes.detach(vol)
    state = server.volume(vol)
    assert (state['status'], state['attach_status'], state['attachments']) == (
        'available', 'detached', [])


# --- fault injection, auth ------------------------------------------------------------------
def test_injected_500_then_success(server):
    vol = server.add_volume()
    cinder = make_client(server, '3.0')
    server.fail('POST', r'^/volumes/[^/]+/action$', status=500,
                action='os-initialize_connection')
    cinder.volumes.reserve(vol)  # another action: not matched
    with pytest.raises(cinder_exc.ClientException) as exc:
        cinder.volumes.initialize_connection(vol, CONNECTOR)
    assert exc.value.code == 500
    assert 'erred' in exc.value.message
    assert cinder.volumes.initialize_connection(vol, CONNECTOR)['data']['target_lun'] == 1


def test_injected_status_repeats_and_message(server):
    server.fail('GET', '/volumes/', status=503, times=2, message='backend away')
    cinder = make_client(server)
    vol = server.add_volume()
    for _ in range(2):
        with pytest.raises(cinder_exc.ClientException) as exc:
            cinder.volumes.get(vol)
        assert (exc.value.code, exc.value.message) == (503, 'backend away')
    assert cinder.volumes.get(vol).status == 'available'


def test_injected_delay(server):
    server.fail('*', '/volumes/', status=None, delay=0.3)
    start = time.monotonic()
    assert make_client(server).volumes.get(server.add_volume()).status == 'available'
    assert time.monotonic() - start >= 0.3


def test_stop_cuts_a_hanging_request(server):
    server.fail('GET', '/volumes/', status=None, delay=30)
    errors = []

    def call():
        try:
            make_client(server).volumes.get(server.add_volume())
        except Exception as exc:  # noqa: BLE001 - any failure is the expected outcome
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    while not server.requests:
        time.sleep(0.01)
    start = time.monotonic()
    server.stop()
    thread.join(10)
    assert time.monotonic() - start < 5 and not thread.is_alive() and errors


def test_rejected_tokens_get_401(server):
    vol = server.add_volume()
    server.reject_token('expired')
    server.reject_token('bad-service')
    with pytest.raises(cinder_exc.Unauthorized):
        make_client(server, token='expired').volumes.get(vol)
    with pytest.raises(cinder_exc.Unauthorized):
        make_client(server, service='bad-service').volumes.get(vol)
    assert make_client(server, token='fresh').volumes.get(vol).id == vol


def test_service_token_required_to_delete_a_connected_attachment():
    with FakeCinder(require_service_token=True) as server:
        vol = server.add_volume()
        user = make_client(server, '3.44')
        att = user.attachments.create(vol, CONNECTOR, INSTANCE)
        user.attachments.complete(att['id'])
        with pytest.raises(cinder_exc.ClientException) as exc:
            user.attachments.delete(att['id'])
        assert exc.value.code == 409 and INSTANCE in exc.value.message
        make_client(server, '3.44', service='nova-svc').attachments.delete(att['id'])
        assert server.requests[-1].headers['X-Service-Token'] == 'nova-svc'
        assert server.volume(vol)['status'] == 'available'
        # A reservation with no connection info is anyone's to delete.
        att = user.attachments.create(vol, None, INSTANCE)
        user.attachments.delete(att['id'])


def test_request_ids_recorded(server):
    req_id = 'req-%s' % uuid.uuid4()
    make_client(server, global_request_id=req_id).volumes.get(server.add_volume())
    assert server.requests[-1].headers['X-OpenStack-Request-ID'] == req_id


# --- 404 and 400 ----------------------------------------------------------------------------
def test_not_found(server):
    cinder = make_client(server, '3.44')
    missing = str(uuid.uuid4())
    with pytest.raises(cinder_exc.NotFound) as exc:
        cinder.volumes.get(missing)
    assert exc.value.code == 404 and missing in exc.value.message
    with pytest.raises(cinder_exc.NotFound):
        cinder.attachments.show(missing)
    with pytest.raises(cinder_exc.NotFound):
        cinder.attachments.delete(missing)
    with pytest.raises(cinder_exc.NotFound):
        cinder.volumes.reserve(missing)
    with pytest.raises(cinder_exc.NotFound):  # another project's volume
        cinder.volumes.get(server.add_volume(project_id='someone-else'))


def test_microversion_too_low_is_404_or_400(server):
    vol = server.add_volume()
    with pytest.raises(cinder_exc.NotFound):  # no /attachments before 3.27
        make_client(server, '3.0').client.post(
            '/attachments', body={'attachment': {'volume_uuid': vol,
                                                 'instance_uuid': INSTANCE}})
    at_3_27 = make_client(server, '3.27')
    att = at_3_27.attachments.create(vol, None, INSTANCE)
    with pytest.raises(cinder_exc.NotFound):  # no os-complete before 3.44
        at_3_27.client.post('/attachments/%s/action' % att['id'], body={'os-complete': None})
    with pytest.raises(cinder_exc.BadRequest) as exc:  # no 'mode' before 3.54
        make_client(server, '3.44').client.post('/attachments', body={'attachment': {
            'volume_uuid': vol, 'instance_uuid': INSTANCE, 'mode': 'ro'}})
    assert "'mode' was unexpected" in exc.value.message


def test_bad_requests(server):
    cinder = make_client(server, '3.44')
    in_use = server.add_volume(status='in-use')
    with pytest.raises(cinder_exc.BadRequest) as exc:
        cinder.volumes.reserve(in_use)
    assert 'must be available to reserve' in exc.value.message
    with pytest.raises(cinder_exc.BadRequest):
        cinder.attachments.create(in_use, None, INSTANCE)
    with pytest.raises(cinder_exc.BadRequest) as exc:
        cinder.volumes.initialize_connection(server.add_volume(), {'host': 'compute-1'})
    assert 'initiator' in exc.value.message
    with pytest.raises(cinder_exc.BadRequest):
        cinder.volumes.begin_detaching(server.add_volume())
    with pytest.raises(cinder_exc.BadRequest):
        cinder.attachments.create(server.add_volume(), None, 'not-a-uuid')
    with pytest.raises(cinder_exc.BadRequest):
        cinder.client.post('/volumes/%s/action' % in_use, body={'os-frobnicate': None})
    # In the attachments flow a connector Cinder's driver refuses is a 500.
    att = cinder.attachments.create(server.add_volume(), None, INSTANCE)
    with pytest.raises(cinder_exc.ClientException) as exc:
        cinder.attachments.update(att['id'], {'host': 'compute-1'})
    assert exc.value.code == 500 and 'initiator' in exc.value.message


def test_urls_without_project(server):
    vol = server.add_volume(project_id=PROJECT)
    cinder = make_client(server, '3.44', project=None)
    assert cinder.volumes.get(vol).id == vol
    assert calls(server) == [('GET', '/volumes/' + vol)]


# --- as a separate process -------------------------------------------------------------------
def _control(url, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, method=method)
    with urllib.request.urlopen(request, timeout=10) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def test_runs_as_a_process_until_sigterm():
    proc = subprocess.Popen([sys.executable, '-m', 'tests.functional.fake_cinder', '--port',
                             '0', '--max-version', '3.50'], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith('http://127.0.0.1:')
        vol = _control(url, 'POST', '/_fake/volumes', {'multiattach': True})['id']
        fake = FakeCinder()  # only to build the client against the other process
        fake.port = int(url.rsplit(':', 1)[1])
        cinder = make_client(fake, '3.44')
        assert cinder.volumes.get(vol).multiattach is True
        probe = make_client(fake, '3.0')
        assert api_versions.get_highest_version(probe) == api_versions.APIVersion('3.50')
        cinder.volumes.reserve(vol)
        assert _control(url, 'GET', '/_fake/volumes/' + vol)['status'] == 'attaching'
        assert [c[:2] for c in _control(url, 'GET', '/_fake/requests')] == [
            ['GET', '/volumes/' + vol], ['GET', '/'], ['POST', '/volumes/%s/action' % vol]]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0

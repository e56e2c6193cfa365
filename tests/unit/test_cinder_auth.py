"""Who the Cinder adapter speaks as, and where it finds Cinder.

Keystone and Cinder are requests-mock'ed; keystoneauth1's own fixture builds the
token bodies.
"""
from keystoneauth1 import fixture as ks_fixture
from keystoneauth1 import loading as ks_loading
import pytest
import requests
import requests_mock

from attachworker import context as aw_context
from attachworker import exception
from attachworker.cinder import CinderAPI
from tests.unit.conftest import CINDER
from tests.unit.conftest import PROJECT
from tests.unit.conftest import TOKEN
from tests.unit.conftest import CinderMock

KEYSTONE = 'http://keystone.test:5000/v3'
SERVICE_PROJECT = 'a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5'


def keystone_token(m, token_id, project_id):
    body = ks_fixture.V3Token(project_id=project_id, user_id='nova-user')
    svc = body.add_service('volumev3', name='cinderv3')
    svc.add_standard_endpoints(public=CINDER + '/v3/' + project_id, region='RegionOne')
    m.get(KEYSTONE, json={'version': ks_fixture.V3Discovery(KEYSTONE)})
    m.post(KEYSTONE + '/auth/tokens', json=body, headers={'X-Subject-Token': token_id},
           status_code=201)


def use_password_auth(conf, group):
    # plugin options exist once the plugin is known, as when read from a file
    conf.register_opts(ks_loading.get_auth_plugin_conf_options('password'), group=group)
    for name, value in (('auth_type', 'password'), ('auth_url', KEYSTONE),
                        ('username', 'nova'), ('password', 'novapass-secret'),
                        ('project_name', 'service'), ('user_domain_id', 'default'),
                        ('project_domain_id', 'default')):
        conf.set_override(name, value, group=group)


@pytest.fixture
def m():
    with requests_mock.Mocker() as mocker:
        yield mocker


def cinder_requests(m):
    return [r for r in m.request_history if r.url.startswith(CINDER)]


def test_caller_token_goes_to_cinder_with_global_request_id(conf, ctxt, m):
    vol = CinderMock(m)
    client = CinderAPI(conf).client(ctxt)
    assert client.get(vol.volume_id)['status'] == 'available'
    for r in cinder_requests(m):
        assert r.headers['X-Auth-Token'] == TOKEN
        assert r.headers['X-OpenStack-Request-ID'] == ctxt.global_id
        assert 'X-Service-Token' not in r.headers


def test_service_token_is_added_when_configured(conf, ctxt, m):
    use_password_auth(conf, 'service_user')
    conf.set_override('send_service_user_token', True, group='service_user')
    keystone_token(m, 'service-token-1', SERVICE_PROJECT)
    vol = CinderMock(m)
    CinderAPI(conf).client(ctxt).get(vol.volume_id)
    r = cinder_requests(m)[-1]
    assert r.headers['X-Auth-Token'] == TOKEN
    assert r.headers['X-Service-Token'] == 'service-token-1'


def test_keystone_unreachable_for_the_service_token(conf, ctxt, m):
    use_password_auth(conf, 'service_user')
    conf.set_override('send_service_user_token', True, group='service_user')
    m.get(KEYSTONE, exc=requests.exceptions.ConnectionError('down'))
    m.post(KEYSTONE + '/auth/tokens', exc=requests.exceptions.ConnectionError('down'))
    CinderMock(m)
    with pytest.raises(exception.IdentityUnavailable):
        CinderAPI(conf).client(ctxt)
    assert cinder_requests(m) == []


def test_rejected_caller_token_never_falls_back_to_service_credentials(conf, ctxt, m):
    use_password_auth(conf, 'cinder')
    keystone_token(m, 'cinder-admin-token', SERVICE_PROJECT)
    vol = CinderMock(m)
    m.get('%s/v3/%s/volumes/%s' % (CINDER, PROJECT, vol.volume_id), status_code=401,
          json={'error': {'message': 'The request you have made requires authentication.'}})
    client = CinderAPI(conf).client(ctxt)
    with pytest.raises(exception.CinderNotAuthorized):
        client.get(vol.volume_id)
    assert not [r for r in m.request_history if r.url.startswith(KEYSTONE)]
    assert {r.headers['X-Auth-Token'] for r in cinder_requests(m)} == {TOKEN}


def test_no_caller_token_uses_the_cinder_section_auth_and_its_catalog(conf, m):
    conf.clear_override('endpoint_template', group='cinder')
    use_password_auth(conf, 'cinder')
    keystone_token(m, 'cinder-admin-token', SERVICE_PROJECT)
    vol = CinderMock(m)
    m.get('%s/v3/%s/volumes/%s' % (CINDER, SERVICE_PROJECT, vol.volume_id),
          json={'volume': vol.volume})
    CinderAPI(conf).client(aw_context.get_admin_context()).get(vol.volume_id)
    r = cinder_requests(m)[-1]
    assert r.headers['X-Auth-Token'] == 'cinder-admin-token'
    assert r.path == '/v3/%s/volumes/%s' % (SERVICE_PROJECT, vol.volume_id)


def test_endpoint_from_the_callers_catalog(conf, m):
    conf.clear_override('endpoint_template', group='cinder')
    catalog = [{'type': 'volumev3', 'name': 'cinderv3', 'endpoints': [
        {'interface': 'public', 'region': 'RegionOne', 'region_id': 'RegionOne',
         'url': 'http://other-cinder.test:8776/v3/' + PROJECT}]}]
    ctxt = aw_context.RequestContext(auth_token=TOKEN, project_id=PROJECT,
                                     service_catalog=catalog)
    m.get('http://other-cinder.test:8776/', json={'versions': [
        {'id': 'v3.0', 'version': '3.71', 'min_version': '3.0', 'status': 'CURRENT'}]})
    m.get('http://other-cinder.test:8776/v3/%s/volumes/v1' % PROJECT,
          json={'volume': {'id': 'v1', 'status': 'available'}})
    assert CinderAPI(conf).client(ctxt).get('v1')['id'] == 'v1'


def test_callers_project_replaces_the_service_project_in_the_cinder_section_catalog(conf, m,
                                                                                    ctxt):
    conf.clear_override('endpoint_template', group='cinder')
    use_password_auth(conf, 'cinder')
    keystone_token(m, 'cinder-admin-token', SERVICE_PROJECT)
    vol = CinderMock(m)
    CinderAPI(conf).client(ctxt).get(vol.volume_id)
    r = cinder_requests(m)[-1]
    assert r.path == '/v3/%s/volumes/%s' % (PROJECT, vol.volume_id)
    assert r.headers['X-Auth-Token'] == TOKEN


def test_no_token_and_no_cinder_auth_is_a_clear_error(conf):
    with pytest.raises(exception.CinderNotAuthorized, match=r'no auth configured in \[cinder\]'):
        CinderAPI(conf).client(aw_context.get_admin_context())


def test_attachments_flow_forced_on_an_old_cinder_is_refused(conf, ctxt, m):
    CinderMock(m, max_version='3.27')
    conf.set_override('attach_flow', 'attachments', group='cinder')
    with pytest.raises(exception.CinderError, match='needs microversion 3.44'):
        CinderAPI(conf).client(ctxt)


def test_microversion_is_negotiated_once_per_endpoint(conf, ctxt, m):
    vol = CinderMock(m, max_version='3.60')
    api = CinderAPI(conf)
    for _ in range(3):
        client = api.client(ctxt)
        client.get(vol.volume_id)
    assert client.version.get_string() == '3.60'
    assert len([r for r in m.request_history if r.path == '/']) == 1
    assert cinder_requests(m)[-1].headers['OpenStack-API-Version'] == 'volume 3.60'


def test_requests_searches_the_environment_only_when_it_configures_something(tmp_path):
    from keystoneauth1 import session as ks_session

    from attachworker.cinder import lean_session

    home = {'HOME': str(tmp_path), 'PATH': '/usr/bin', 'LANG': 'C.UTF-8'}
    session = ks_session.Session()
    assert lean_session(session, home) and session.session.trust_env is False
    assert session.verify is True
    for name in ('https_proxy', 'HTTP_PROXY', 'no_proxy', 'ALL_PROXY', 'NETRC'):
        session = ks_session.Session()
        assert not lean_session(session, dict(home, **{name: 'x'})), name
        assert session.session.trust_env is True
    # a CA bundle from the environment is what a trusting session would verify with
    session = ks_session.Session()
    assert lean_session(session, dict(home, REQUESTS_CA_BUNDLE='/etc/ca.pem'))
    assert session.verify == '/etc/ca.pem'
    session = ks_session.Session(verify='/etc/mine.pem')  # [cinder] cafile wins, as before
    assert lean_session(session, dict(home, CURL_CA_BUNDLE='/etc/ca.pem'))
    assert session.verify == '/etc/mine.pem'
    (tmp_path / '.netrc').write_text('machine cinder login a password b\n')
    session = ks_session.Session()
    assert not lean_session(session, home) and session.session.trust_env is True


def test_a_connection_per_thread_is_kept_for_cinder_not_ten():
    """With more threads than requests' 10 pooled connections, every connection past
    the tenth was closed after its call: under load, a TCP connect per attach. After
    size_pools, 32 threads calling at once, round after round, reuse 32 connections
    (more than 40 without it, on a quiet machine)."""
    import http.server
    import threading

    from keystoneauth1 import session as ks_session

    from attachworker.cinder import size_pools

    connections = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = 'HTTP/1.1'

        def setup(self):
            connections.append(self.client_address)
            super().setup()

        def do_GET(self):
            self.send_response(200)
            self.send_header('Content-Length', '2')
            self.end_headers()
            self.wfile.write(b'{}')

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = 'http://127.0.0.1:%d/' % server.server_address[1]

    def connects(session, threads=32, rounds=4):
        del connections[:]
        barrier = threading.Barrier(threads)

        def run():
            for _ in range(rounds):
                barrier.wait(30)  # every thread holds a connection at once
                session.get(url, authenticated=False, raise_exc=True)
        workers = [threading.Thread(target=run) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        return len(connections)
    try:
        # what it was: requests keeps ten, and closes the others after each call
        assert ks_session.Session().session.adapters['http://']._pool_maxsize == 10
        session = ks_session.Session()
        size_pools(session, 32)
        adapter = session.session.adapters['http://']
        assert isinstance(adapter, ks_session.TCPKeepAliveAdapter)  # keepalive kept
        assert connects(session) <= 32
        size_pools(session, 4)  # never smaller than requests' own default
        assert session.session.adapters['http://']._pool_maxsize == 32
    finally:
        server.shutdown()


def test_the_pooled_adapter_keeps_the_tls_settings_of_cinder():
    """[cinder] tls_min_version and tls_ciphers live on keystoneauth1's adapter: a
    bigger pool must not drop them (to the system's defaults)."""
    import ssl

    from keystoneauth1 import session as ks_session

    from attachworker.cinder import size_pools
    session = ks_session.Session(tls_min_version='1.3', tls_ciphers='ECDHE+AESGCM')
    old = session.session.adapters['https://']
    size_pools(session, 64)
    adapter = session.session.adapters['https://']
    assert adapter is not old and adapter is session.session.adapters['http://']
    assert adapter._pool_maxsize == 64
    assert (adapter.tls_min_version, adapter.tls_ciphers) == ('1.3', 'ECDHE+AESGCM')
    context = adapter.poolmanager.connection_pool_kw['ssl_context']
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert adapter.max_retries.total == old.max_retries.total

"""The [service_user] and [cinder] session options, and the start-up warning.

Keystone and Cinder are requests-mock'ed (see test_cinder_auth); requests-mock
records the ``verify`` and ``timeout`` each request was sent with, i.e. which
session sent it.
"""
import logging
import pathlib

from keystoneauth1 import loading as ks_loading
from keystoneauth1 import session as ks_session
from keystoneauth1 import token_endpoint
from oslo_config import cfg
import pytest
import requests_mock

from attachworker import conf as aw_conf
from attachworker import config
from attachworker import context as aw_context
from attachworker.cinder import CinderAPI
from attachworker.cinder import ServiceTokenAuth
from attachworker.cmd import manage
from attachworker.conf import cinder as cinder_conf
from attachworker.conf import service_user as service_user_conf
from tests.unit.conftest import CINDER
from tests.unit.conftest import TOKEN
from tests.unit.conftest import CinderMock
from tests.unit.test_cinder_auth import KEYSTONE
from tests.unit.test_cinder_auth import SERVICE_PROJECT
from tests.unit.test_cinder_auth import keystone_token
from tests.unit.test_cinder_auth import use_password_auth

SAMPLE = pathlib.Path(__file__).resolve().parents[2] / 'etc/attachworker/attachworker.conf.sample'


@pytest.fixture
def m():
    with requests_mock.Mocker() as mocker:
        yield mocker


def keystone_requests(m):
    return [r for r in m.request_history if r.url.startswith(KEYSTONE)]


def cinder_requests(m):
    return [r for r in m.request_history if r.url.startswith(CINDER)]


def token_user(request):
    return request.json()['auth']['identity']['password']['user']['name']


# --- timeouts ---------------------------------------------------------------------
def test_a_fresh_config_has_timeouts():
    conf = cfg.ConfigOpts()
    aw_conf.register_opts(conf)
    conf([], default_config_files=[])
    assert conf.cinder.timeout == cinder_conf.DEFAULT_TIMEOUT == 90.0
    assert conf.service_user.timeout == service_user_conf.DEFAULT_TIMEOUT == 30.0
    assert ks_loading.load_session_from_conf_options(conf, 'cinder').timeout == 90.0
    assert ks_loading.load_session_from_conf_options(conf, 'service_user').timeout == 30.0


def test_registering_twice_is_still_fine():
    conf = cfg.ConfigOpts()
    aw_conf.register_opts(conf)
    aw_conf.register_opts(conf)
    conf([], default_config_files=[])
    assert conf.cinder.timeout == 90.0


def test_the_sample_config_documents_the_timeouts():
    text = SAMPLE.read_text()
    cinder = text[text.index('\n[cinder]\n'):]
    cinder = cinder[:cinder.index('\n[', 1)]
    service = text[text.index('\n[service_user]\n'):]
    service = service[:service.index('\n[', 1) if '\n[' in service[1:] else None]
    assert '#timeout = 90.0' in cinder
    assert 'rpc_response_timeout' in cinder
    assert '#timeout = 30.0' in service


def test_cinder_calls_carry_the_default_timeout(conf, ctxt, m):
    vol = CinderMock(m)
    CinderAPI(conf).client(ctxt).get(vol.volume_id)
    assert cinder_requests(m)
    assert {r.timeout for r in cinder_requests(m)} == {90.0}


# --- the service user's own session ------------------------------------------------
def sessions(conf):
    conf.set_override('cafile', '/etc/attachworker/cinder-ca.pem', group='cinder')
    conf.set_override('timeout', 11, group='cinder')
    conf.set_override('cafile', '/etc/attachworker/keystone-ca.pem', group='service_user')
    conf.set_override('timeout', 7, group='service_user')
    use_password_auth(conf, 'service_user')
    conf.set_override('send_service_user_token', True, group='service_user')


def test_service_token_is_fetched_with_the_service_user_session(conf, ctxt, m):
    sessions(conf)
    keystone_token(m, 'service-token-1', SERVICE_PROJECT)
    vol = CinderMock(m)
    CinderAPI(conf).client(ctxt).get(vol.volume_id)
    assert keystone_requests(m)
    for r in keystone_requests(m):
        assert (r.verify, r.timeout) == ('/etc/attachworker/keystone-ca.pem', 7.0)
    assert cinder_requests(m)
    for r in cinder_requests(m):
        assert (r.verify, r.timeout) == ('/etc/attachworker/cinder-ca.pem', 11.0)
        assert r.headers['X-Auth-Token'] == TOKEN
        assert r.headers['X-Service-Token'] == 'service-token-1'


def test_service_user_insecure_applies_to_its_keystone_only(conf, ctxt, m):
    use_password_auth(conf, 'service_user')
    conf.set_override('send_service_user_token', True, group='service_user')
    conf.set_override('insecure', True, group='service_user')
    keystone_token(m, 'service-token-1', SERVICE_PROJECT)
    vol = CinderMock(m)
    CinderAPI(conf).client(ctxt).get(vol.volume_id)
    assert {r.verify for r in keystone_requests(m)} == {False}
    assert cinder_requests(m)
    # verified: True, or the CA bundle of REQUESTS_CA_BUNDLE when that is set
    assert all(r.verify for r in cinder_requests(m))


def test_without_a_caller_token_each_user_gets_its_own_session(conf, m):
    sessions(conf)
    use_password_auth(conf, 'cinder')
    conf.set_override('username', 'attachworker', group='cinder')
    keystone_token(m, 'some-token', SERVICE_PROJECT)
    vol = CinderMock(m, project=SERVICE_PROJECT)
    CinderAPI(conf).client(aw_context.get_admin_context()).get(vol.volume_id)
    by_user = {token_user(r): (r.verify, r.timeout) for r in keystone_requests(m)
               if r.method == 'POST'}
    assert by_user == {'attachworker': ('/etc/attachworker/cinder-ca.pem', 11.0),
                       'nova': ('/etc/attachworker/keystone-ca.pem', 7.0)}
    assert {r.headers['X-Service-Token'] for r in cinder_requests(m)} == {'some-token'}


def test_service_token_auth_uses_its_session_for_the_service_token():
    class Recorder:
        def __init__(self):
            self.sessions = []

        def get_token(self, session):
            self.sessions.append(session)
            return 'service-token'

    cinder_session, service_session = ks_session.Session(), ks_session.Session()
    service = Recorder()
    auth = ServiceTokenAuth(token_endpoint.Token(CINDER, TOKEN), service, service_session)
    assert auth.get_headers(cinder_session) == {'X-Auth-Token': TOKEN,
                                                'X-Service-Token': 'service-token'}
    assert service.sessions == [service_session]
    assert auth.get_token(cinder_session) == TOKEN  # the rest is the caller's auth


# --- the start-up warning -----------------------------------------------------------
def warnings_of(caplog):
    return [r for r in caplog.records
            if r.name == 'attachworker.config' and r.levelno == logging.WARNING]


def test_warns_when_no_service_token_is_sent(conf, caplog):
    with caplog.at_level(logging.WARNING, logger='attachworker.config'):
        config.warn_about_config(conf)
    [warning] = warnings_of(caplog)
    message = warning.getMessage()
    assert '\n' not in message
    for words in ('[service_user] send_service_user_token is false', 'OSSA-2023-003',
                  'detaching and undoing a failed attach will fail', 'Set it to true'):
        assert words in message
    assert config.mask_secrets(message) == message  # nothing in it looks like a secret


def test_no_warning_when_the_service_token_is_sent(conf, caplog):
    conf.set_override('send_service_user_token', True, group='service_user')
    with caplog.at_level(logging.WARNING, logger='attachworker.config'):
        config.warn_about_config(conf)
    assert warnings_of(caplog) == []


@pytest.mark.parametrize('prog,warns', [('attachworker-compute', True),
                                        ('attachworker-manage', True),
                                        ('attachworker-cast', False),
                                        ('attachworker-audit', False)])
@pytest.mark.parametrize('send', [False, True])
def test_parse_args_warns_for_the_commands_that_undo(prog, warns, send, tmp_path,
                                                     restore_logging):
    conf_file = tmp_path / 'attachworker.conf'
    conf_file.write_text('[service_user]\nsend_service_user_token = %s\n' % send)
    log_file = tmp_path / 'attachworker.log'
    config.parse_args(cfg.ConfigOpts(), [prog, '--config-file', str(conf_file),
                                         '--log-file', str(log_file)], prog,
                      default_config_files=[])
    for handler in logging.getLogger().handlers:
        handler.flush()
    logged = log_file.read_text() if log_file.exists() else ''
    warned = [line for line in logged.splitlines() if ' WARNING attachworker.config ' in line
              and '[service_user] send_service_user_token is false' in line]
    assert len(warned) == (1 if warns and not send else 0), logged


@pytest.mark.parametrize('command,warns', [('reconcile', True), ('connector', False),
                                           ('journal', False)])
def test_manage_warns_only_for_its_commands_that_call_cinder(command, warns, tmp_path,
                                                              restore_logging):
    # the others print on stdout, where the log goes too (connector's JSON)
    log_file = tmp_path / 'attachworker.log'
    conf = cfg.ConfigOpts()
    conf.register_cli_opt(manage.command_opt)
    argv = ['attachworker-manage', '--log-file', str(log_file), command]
    config.parse_args(conf, argv + (['list'] if command == 'journal' else []),
                      'attachworker-manage', default_config_files=[])
    for handler in logging.getLogger().handlers:
        handler.flush()
    logged = log_file.read_text() if log_file.exists() else ''
    assert ('send_service_user_token is false' in logged) == warns, logged

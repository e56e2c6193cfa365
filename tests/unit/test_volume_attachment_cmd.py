"""attachworker-manage volume_attachment: the host's record and Cinder's, compared."""
import json

from oslo_config import cfg
import pytest
import requests_mock

from attachworker import virt
from attachworker.cmd import manage
from tests.unit.conftest import CINDER
from tests.unit.conftest import CinderMock
from tests.unit.test_cinder_auth import KEYSTONE
from tests.unit.test_cinder_auth import SERVICE_PROJECT
from tests.unit.test_cinder_auth import keystone_token

INSTANCE = '8f0e3c4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b'


@pytest.fixture
def setup(tmp_path, restore_logging):
    state = tmp_path / 'state'
    root = tmp_path / 'root' / 'etc' / 'iscsi'
    root.mkdir(parents=True)
    (root / 'initiatorname.iscsi').write_text('InitiatorName=iqn.2004-10.org.unit:m\n')
    config = tmp_path / 'manage.conf'
    config.write_text(
        '[DEFAULT]\nstate_path = %s\nhost = compute-unit\n[connector]\nhost_root = %s\n'
        '[cinder]\nendpoint_template = %s/v3/%%(project_id)s\nhttp_retries = 0\n'
        'auth_type = password\nauth_url = %s\nusername = nova\npassword = pw\n'
        'project_name = service\nuser_domain_id = default\nproject_domain_id = default\n'
        '[service_user]\nsend_service_user_token = false\n'
        % (state, tmp_path / 'root', CINDER, KEYSTONE))
    with requests_mock.Mocker() as m:
        keystone_token(m, 'admin-token', SERVICE_PROJECT)
        cinder = CinderMock(m, project=SERVICE_PROJECT)
        conf = cfg.ConfigOpts()

        def run(*argv):
            nonlocal conf
            conf = cfg.ConfigOpts()
            return manage.run(conf, ['--config-file', str(config), *argv])
        yield cinder, run, conf, state


def attached_everywhere(cinder, conf_state, mode='rw', record_id=None):
    cinder.volume.update(status='in-use', attachments=[{
        'server_id': INSTANCE, 'attachment_id': cinder.attachment_id, 'device': '/dev/vdb'}])
    cinder.att.update(instance=INSTANCE, status='attached')
    c = cfg.ConfigOpts()
    from attachworker import conf as aw_conf
    aw_conf.register_opts(c)
    c([])
    c.set_override('state_path', str(conf_state))
    virt.load_driver(c).attach_volume(
        None, {'driver_volume_type': 'iscsi', 'data': {}}, {'uuid': INSTANCE}, '/dev/vdb',
        cinder.volume_id, {'flow': 'attachments', 'mode': mode,
                           'attachment_id': record_id or cinder.attachment_id})


def test_a_consistent_attachment(setup, capsys):
    cinder, run, _, state = setup
    attached_everywhere(cinder, state)
    assert run('volume_attachment', 'show', INSTANCE, cinder.volume_id) == 0
    out = capsys.readouterr().out
    assert 'consistent' in out and cinder.attachment_id in out and 'MISMATCH' not in out


@pytest.mark.parametrize('case', ['cinder-only', 'host-only', 'other-id', 'other-mode'])
def test_every_mismatch_is_flagged(case, setup, capsys):
    cinder, run, _, state = setup
    attached_everywhere(cinder, state, mode='ro' if case == 'other-mode' else 'rw',
                        record_id='0e5e6e4c-0000-4000-8000-000000000000'
                        if case == 'other-id' else None)
    if case == 'cinder-only':
        c = cfg.ConfigOpts()
        from attachworker import conf as aw_conf
        aw_conf.register_opts(c)
        c([])
        c.set_override('state_path', str(state))
        virt.load_driver(c).detach_volume(None, {'uuid': INSTANCE}, None, cinder.volume_id)
    if case == 'host-only':
        cinder.volume.update(status='available', attachments=[])
    assert run('volume_attachment', 'show', INSTANCE, cinder.volume_id) == 2
    out = capsys.readouterr().out
    expected = {'cinder-only': 'attached in Cinder but not on this host',
                'host-only': 'attached on the host but not in Cinder',
                'other-id': 'attachment id: 0e5e6e4c', 'other-mode': 'mode: ro on the host'}
    assert 'MISMATCH: ' + expected[case] in out


def test_bad_arguments_and_the_connector(setup, capsys):
    cinder, run, _, _ = setup
    assert run('volume_attachment', 'show', 'nope', cinder.volume_id) == 1
    assert 'INSTANCE is not a UUID' in capsys.readouterr().err
    assert run('volume_attachment', 'get_connector') == 0
    connector = json.loads(capsys.readouterr().out)
    assert connector['initiator'] == 'iqn.2004-10.org.unit:m'
    assert connector['host'] == 'compute-unit'

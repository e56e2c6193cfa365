"""attachworker-audit's query commands, run as an operator would, on a fresh config."""
import json
import logging

from oslo_config import cfg
import pytest

from attachworker.audit import store
from attachworker.cmd import audit as audit_cmd
from tests.unit.audit.helpers import T0
from tests.unit.audit.helpers import event


@pytest.fixture(autouse=True)
def restore_logging():
    """main() sets up oslo.log on the root logger, bound to this test's streams."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / 'audit.conf'
    path.write_text('[DEFAULT]\nstate_path = %s\n[audit]\nopen_operation_timeout = 60\n'
                    % (tmp_path / 'state'))
    return path


def run(config_file, *args):
    return audit_cmd.main(['--config-file', str(config_file), *args], conf=cfg.ConfigOpts())


def fill(tmp_path):
    engine = store.create_engine(store.default_url(str(tmp_path / 'state')))
    audit_store = store.Store(engine)
    audit_store.record_event(event('attach', 'start', at=T0, request_id='req-1',
                                   host='compute-1'))
    audit_store.record_event(event('attach', 'error', at=T0, request_id='req-1',
                                   host='compute-1'))
    audit_store.record_event(event('detach', 'start', at=T0, request_id='req-2',
                                   host='compute-2'))
    engine.dispose()


def test_db_upgrade_then_queries(config_file, tmp_path, capsys):
    assert run(config_file, 'db', 'upgrade') == 0
    assert 'revision 0001 (head 0001)' in capsys.readouterr().out
    fill(tmp_path)

    assert run(config_file, 'list', '--host', 'compute-2', '--format', 'json') == 0
    assert [op['request_id'] for op in json.loads(capsys.readouterr().out)] == ['req-2']

    assert run(config_file, 'list', '--outcome', 'error') == 0
    out = capsys.readouterr().out
    assert 'req-1' in out and 'req-2' not in out and '1 operation(s)' in out

    assert run(config_file, 'show', 'req-1', '--format', 'json') == 0
    shown = json.loads(capsys.readouterr().out)
    assert [e['event_type'] for e in shown['events']] == ['instance.volume_attach.start',
                                                          'instance.volume_attach.error']

    assert run(config_file, 'stats', '--format', 'json') == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats['by_outcome'] == {'pending': 1, 'success': 0, 'error': 1}
    assert stats['open_timeout'] == 60  # from [audit] open_operation_timeout
    assert [op['request_id'] for op in stats['open']] == ['req-2']
    assert run(config_file, 'stats', '--open-timeout', '1e9', '--format', 'json') == 0
    assert json.loads(capsys.readouterr().out)['open'] == []


def test_show_unknown_request_fails_with_a_message(config_file, capsys):
    run(config_file, 'db', 'upgrade')
    capsys.readouterr()
    assert run(config_file, 'show', 'req-missing') == 1
    assert 'No operation with request id req-missing' in capsys.readouterr().err


def test_serve_refuses_a_database_that_is_not_upgraded(config_file, capsys):
    assert run(config_file, 'serve') == 1
    assert 'run "attachworker-audit db upgrade"' in capsys.readouterr().err


def test_bad_time_argument_is_a_usage_error(config_file):
    with pytest.raises(SystemExit) as exited:
        run(config_file, 'list', '--since', 'last tuesday')
    assert exited.value.code == 2

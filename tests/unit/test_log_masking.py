"""Secrets in exception texts, tracebacks and stacks never reach a log handler.

Through the real oslo.log set-up of ``config.parse_args`` (a log file in a tmp
dir), and through the filter alone on a handler of our own.
"""
import io
import logging
import re
import sys

from oslo_config import cfg
from oslo_log import formatters
from oslo_log import log as oslo_logging
from oslo_utils import strutils
import pytest

from attachworker import config
from tests.unit.conftest import CHAP_SECRET
from tests.unit.conftest import TOKEN

PASSWORD = 'novapass-Secr3t-never-logged'

#: exception texts carrying a secret, in the forms libraries print them
LEAKY = {
    'key=value': 'iscsiadm failed: auth_password=%s' % CHAP_SECRET,
    'header': 'Keystone said 401 to X-Auth-Token: %s' % TOKEN,
    'dict': "bad request {'username': 'nova', 'password': '%s'}" % PASSWORD,
    'json': 'body {"auth_token": "%s", "expires": "soon"}' % TOKEN,
    'connection_info': "unexpected {'driver_volume_type': 'iscsi', 'data': {"
                       "'auth_method': 'CHAP', 'auth_password': '%s', "
                       "'target_lun': 1}}" % CHAP_SECRET,
}
SECRETS = (CHAP_SECRET, TOKEN, PASSWORD)


@pytest.fixture
def log_file(tmp_path, restore_logging):
    """parse_args with a log file; returns a function reading what was written."""
    path = tmp_path / 'attachworker.log'
    config.parse_args(cfg.ConfigOpts(), ['attachworker-test', '--log-file', str(path)],
                      'attachworker-test', default_config_files=[])

    def read():
        for handler in logging.getLogger().handlers:
            handler.flush()
        return path.read_text()
    return read


def fail_in_cinder_call(text):
    raise RuntimeError(text)


def assert_masked(out):
    for secret in SECRETS:
        assert secret not in out
    assert '***' in out


@pytest.mark.parametrize('form', sorted(LEAKY))
def test_log_exception_masks_the_traceback(form, log_file):
    log = oslo_logging.getLogger('attachworker.test')
    try:
        fail_in_cinder_call(LEAKY[form])
    except RuntimeError:
        log.exception('Attach failed')
    out = log_file()
    assert_masked(out)
    assert re.search(r' ERROR attachworker\.test \[[^]]*\] Attach failed: RuntimeError: ', out)
    assert 'Traceback (most recent call last):' in out
    assert 'in fail_in_cinder_call' in out
    assert 'RuntimeError: ' in out


def test_exc_info_true_is_masked_too(log_file):
    log = oslo_logging.getLogger('attachworker.test')
    try:
        fail_in_cinder_call(LEAKY['connection_info'])
    except RuntimeError:
        log.error('initialize_connection failed', exc_info=True)
    out = log_file()
    assert_masked(out)
    assert 'in fail_in_cinder_call' in out


def test_chained_exceptions_are_masked_and_kept(log_file):
    log = logging.getLogger('keystoneauth1.test')  # a library's plain logger
    try:
        try:
            try:
                fail_in_cinder_call(LEAKY['key=value'])
            except RuntimeError as exc:
                raise ValueError(LEAKY['header']) from exc
        except ValueError:
            raise LookupError(LEAKY['dict'])  # noqa: B904 - the implicit chain
    except LookupError:
        log.error('Keystone call failed', exc_info=True)
    out = log_file()
    assert_masked(out)
    assert 'The above exception was the direct cause of the following exception' in out
    assert 'During handling of the above exception, another exception occurred' in out
    assert out.count('Traceback (most recent call last):') == 3
    for name in ('RuntimeError: ', 'ValueError: ', 'LookupError: '):
        assert name in out


def test_error_summary_of_a_warning_in_an_except_block_is_masked(log_file):
    # oslo.log appends the exception being handled to a WARNING line that has no
    # exc_info: "<message>: RuntimeError: <its text>"
    log = oslo_logging.getLogger('attachworker.test')
    try:
        fail_in_cinder_call(LEAKY['json'])
    except RuntimeError:
        log.warning('Cinder call failed, retrying')
    out = log_file()
    assert_masked(out)
    assert 'Cinder call failed, retrying: RuntimeError: body {"auth_token": "***"' in out


def test_a_traceback_without_secrets_keeps_the_oslo_log_line_prefix(log_file):
    log = oslo_logging.getLogger('attachworker.test')
    try:
        fail_in_cinder_call('volume is busy')
    except RuntimeError:
        log.exception('Attach failed')
    lines = [line for line in log_file().splitlines() if line.strip()]
    assert len(lines) >= 4
    assert all(' ERROR attachworker.test ' in line for line in lines), lines


def test_stack_info_is_masked(log_file):
    # the stack shows this source line, comment included
    log = logging.getLogger('attachworker.test')
    log.warning('where am I', stack_info=True)  # password=not-in-the-log
    out = log_file()
    assert 'Stack (most recent call last):' in out
    assert 'not-in-the-log' not in out
    assert 'password=***' in out


def test_the_filter_alone_masks_a_plain_handler():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter('%(levelname)s %(name)s %(message)s'))
    handler.addFilter(config.MaskSecrets())
    log = logging.getLogger('attachworker.test.plain')
    log.addHandler(handler)
    log.propagate = False
    try:
        try:
            fail_in_cinder_call(LEAKY['connection_info'])
        except RuntimeError as exc:
            raise ValueError(LEAKY['header']) from exc
    except ValueError:
        log.exception('Attach failed for %s', LEAKY['dict'])
    log.removeHandler(handler)
    out = stream.getvalue()
    assert_masked(out)
    assert out.startswith("ERROR attachworker.test.plain Attach failed for bad request "
                          "{'username': 'nova', 'password': '***'}")
    assert 'The above exception was the direct cause of the following exception' in out
    assert 'in fail_in_cinder_call' in out


def test_mask_handler_on_an_oslo_log_formatter():
    conf = cfg.ConfigOpts()
    oslo_logging.register_options(conf)
    conf([], default_config_files=[])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatters.ContextFormatter(project='attachworker', config=conf))
    config.mask_handler(handler)
    config.mask_handler(handler)  # idempotent
    assert len(handler.filters) == 1
    log = logging.getLogger('attachworker.test.oslo')
    log.addHandler(handler)
    log.propagate = False
    try:
        fail_in_cinder_call(LEAKY['key=value'])
    except RuntimeError:
        log.exception('Attach failed')
    log.removeHandler(handler)
    out = stream.getvalue()
    assert_masked(out)
    assert 'Attach failed: RuntimeError: iscsiadm failed: auth_password=***' in out
    assert 'in fail_in_cinder_call' in out


def record(**kwargs):
    fields = dict(name='t', level=logging.ERROR, pathname=__file__, lineno=1, msg='m',
                  args=(), exc_info=None)
    fields.update(kwargs)
    return logging.LogRecord(**fields)


def test_filter_masks_stack_info_and_an_exc_text_already_formatted():
    rec = record(sinfo='Stack (most recent call last):\n  X-Auth-Token: %s\n' % TOKEN)
    rec.exc_text = 'Traceback (most recent call last):\nRuntimeError: token=%s' % TOKEN
    assert config.MaskSecrets().filter(rec)
    assert rec.stack_info == 'Stack (most recent call last):\n  X-Auth-Token: ***\n'
    assert rec.exc_text == 'Traceback (most recent call last):\nRuntimeError: token=***'


def test_filter_keeps_exc_info_when_there_is_nothing_to_mask():
    try:
        fail_in_cinder_call('volume is busy')
    except RuntimeError:
        rec = record(exc_info=sys.exc_info())
    config.MaskSecrets().filter(rec)
    assert rec.exc_info is not None and rec.exc_text is None


def test_filter_drops_exc_info_when_it_masked_the_traceback():
    try:
        fail_in_cinder_call(LEAKY['header'])
    except RuntimeError:
        rec = record(exc_info=sys.exc_info())
    config.MaskSecrets().filter(rec)
    assert rec.exc_info is None
    assert rec.exc_text.startswith('Traceback (most recent call last):')
    assert rec.exc_text.endswith('RuntimeError: Keystone said 401 to X-Auth-Token: ***')


def test_filter_leaves_a_bad_format_to_the_handler():
    rec = record(msg='%s and %s', args=('one',))
    assert config.MaskSecrets().filter(rec)
    assert (rec.msg, rec.args) == ('%s and %s', ('one',))


def test_mask_secrets_does_not_eat_the_lines_after_a_secret():
    text = ("Traceback (most recent call last):\n"
            "  File \"x.py\", line 1, in f\n"
            "RuntimeError: {'auth_password': '%s', 'target_lun': 1}\n"
            "\n"
            "The above exception was the direct cause of the following exception:\n"
            "\n"
            "Traceback (most recent call last):\n"
            "  File \"y.py\", line 2, in g\n"
            "ValueError: 'bad'\n" % CHAP_SECRET)
    # oslo.utils' mask_password on the whole text deletes what lies between the
    # last two quotes of it, across lines: the last frame and exception are gone
    assert 'ValueError' not in strutils.mask_password(text)
    masked = config.mask_secrets(text)
    assert CHAP_SECRET not in masked
    assert masked.count('\n') == text.count('\n')
    assert 'The above exception was the direct cause' in masked
    assert 'File "y.py", line 2, in g' in masked


@pytest.mark.parametrize('text,expected', [
    ('X-Auth-Token: gAAAA-x', 'X-Auth-Token: ***'),
    ('x-service-token:gAAAA-x, next', 'x-service-token:***, next'),
    ('-H "X-Subject-Token: gAAAA-x"', '-H "X-Subject-Token: ***"'),
    # keystoneauth's digest of a token identifies it without being one
    ('-H "X-Auth-Token: {SHA256}3f2a"', '-H "X-Auth-Token: {SHA256}3f2a"'),
    ("{'X-Auth-Token': 'gAAAA-x'}", "{'X-Auth-Token': '***'}"),
    ('nothing to hide', 'nothing to hide'),
])
def test_mask_secrets_token_headers(text, expected):
    assert config.mask_secrets(text) == expected

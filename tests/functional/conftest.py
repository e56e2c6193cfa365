"""Functional fixtures: the real RabbitMQ on 127.0.0.1:5672, a worker subprocess,
and the Cinder stand-in (allowed here, never in integration tests).

Each test gets its own ``control_exchange`` and host name, so tests never see each
other's casts or notifications.
"""
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import uuid

from oslo_config import cfg
import pytest

from attachworker import config
from attachworker import outcome
from attachworker import rpc
from attachworker import rpcapi
from tests.functional.fake_cinder import FakeCinder

RABBIT = 'rabbit://guest:guest@127.0.0.1:5672/'
BIN = pathlib.Path(sys.executable).parent
CHAP_SECRET = 'chap-Funct10nal-Secret'


def pytest_collection_modifyitems(items):
    for item in items:
        if 'tests/functional' in str(item.fspath):
            item.add_marker(pytest.mark.functional)


@pytest.fixture(scope='session', autouse=True)
def rabbitmq():
    """Functional tests need the broker: fail loudly rather than skip."""
    with socket.socket() as s:
        s.settimeout(2)
        if s.connect_ex(('127.0.0.1', 5672)) != 0:
            pytest.fail('RabbitMQ is not listening on 127.0.0.1:5672 '
                        '(tools/run-tests starts it)')


@pytest.fixture
def cinder():
    server = FakeCinder(chap_password=CHAP_SECRET).start()
    yield server
    server.stop()


class Worker:
    """attachworker-compute as a subprocess, with its config and log file."""

    def __init__(self, tmp_path, cinder_url, **options):
        self.host = 'ft-%s' % uuid.uuid4().hex[:8]
        self.exchange = 'attachworker-ft-%s' % uuid.uuid4().hex[:8]
        self.log = tmp_path / 'worker.log'
        self.state = tmp_path / 'state'
        root = tmp_path / 'host-root' / 'etc' / 'iscsi'
        root.mkdir(parents=True)
        (root / 'initiatorname.iscsi').write_text('InitiatorName=iqn.2004-10.org.ft:host\n')
        sections = {
            'DEFAULT': {'transport_url': RABBIT, 'control_exchange': self.exchange,
                        'host': self.host, 'state_path': self.state, 'debug': 'true',
                        'log_file': self.log, 'executor_thread_pool_size': 8},
            'cinder': {'endpoint_template': cinder_url + '/v3/%(project_id)s',
                       'http_retries': 1},
            'connector': {'host_root': tmp_path / 'host-root'},
            'worker': {'graceful_shutdown_timeout': 30},
        }
        for key, value in options.items():
            group, name = key.split('__') if '__' in key else ('DEFAULT', key)
            sections.setdefault(group, {})[name] = value
        self.config = tmp_path / 'worker.conf'
        self.config.write_text(''.join(
            '[%s]\n%s\n' % (group, ''.join('%s = %s\n' % kv for kv in values.items()))
            for group, values in sections.items()))
        self.proc = None

    def start(self, timeout=30):
        self.output = open(self.log.with_suffix('.out'), 'w')
        self.proc = subprocess.Popen([str(BIN / 'attachworker-compute'), '--config-file',
                                      str(self.config)], stdout=self.output,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log.exists() and 'attachworker-compute ready' in self.log.read_text():
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError('worker did not start:\n' + self.logs()[-3000:])

    def stop(self, timeout=60):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def logs(self):
        text = self.log.read_text() if self.log.exists() else ''
        out = self.log.with_suffix('.out')
        return text + (out.read_text() if out.exists() else '')


@pytest.fixture
def make_worker(tmp_path, cinder):
    workers = []

    def make(**options):
        worker = Worker(tmp_path / ('w%d' % len(workers)), cinder.url, **options)
        workers.append(worker)
        return worker
    yield make
    for worker in workers:
        worker.stop()


@pytest.fixture
def client_conf():
    """cfg.CONF of this (the controller's) process, pointed at a worker's config."""
    conf = cfg.CONF

    def load(worker):
        config.parse_args(conf, ['test', '--config-file', str(worker.config)], 'test')
        return conf
    yield load
    conf.reset()


@pytest.fixture
def controller(client_conf):
    """(ComputeAPI, OutcomeWatcher) talking to ``worker`` over the real broker."""
    opened = []

    def connect(worker):
        conf = client_conf(worker)
        transport = rpc.get_rpc_transport(conf)
        watcher = outcome.OutcomeWatcher(conf).__enter__()
        opened.append((transport, watcher))
        return rpcapi.ComputeAPI(conf, transport), watcher
    yield connect
    for transport, watcher in opened:
        watcher.__exit__(None, None, None)
        transport.cleanup()


def wait_outcomes(watcher, request_ids, timeout=60):
    """{request_id: [event types]} once each has an .end or .error, or at timeout."""
    deadline = time.monotonic() + timeout
    while True:
        notes = watcher.events()
        seen = {}
        for note in notes:
            rid = outcome.request_id_of(note)
            seen.setdefault(rid, []).append(note['event_type'])
        done = all(any(e.endswith(('.end', '.error')) for e in seen.get(r, []))
                   for r in request_ids)
        if done or time.monotonic() > deadline:
            return seen
        time.sleep(0.1)


os.environ.setdefault('PYTHONUNBUFFERED', '1')

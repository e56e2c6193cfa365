"""Functional fixtures: the real RabbitMQ on 127.0.0.1:5672, a worker subprocess,
and the Cinder stand-in (allowed here, never in integration tests).

Each test gets its own ``control_exchange`` and host name, so tests never see each
other's casts or notifications.
"""
import pathlib
import socket
import sys

import pytest

from tests.functional.fake_cinder import FakeCinder
from tests.harness import Worker

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


def worker_sections(tmp_path, cinder_url):
    root = tmp_path / 'host-root' / 'etc' / 'iscsi'
    root.mkdir(parents=True, exist_ok=True)
    (root / 'initiatorname.iscsi').write_text('InitiatorName=iqn.2004-10.org.ft:host\n')
    return {
        'DEFAULT': {'transport_url': RABBIT, 'debug': 'true', 'executor_thread_pool_size': 8},
        # recovery has no caller token: it acts as the [cinder] user (here a fixed
        # token the stand-in accepts, as it accepts any)
        'cinder': {'endpoint_template': cinder_url + '/v3/%(project_id)s',
                   'http_retries': 1, 'auth_type': 'admin_token',
                   'endpoint': cinder_url, 'token': 'functional-service-token'},
        'connector': {'host_root': tmp_path / 'host-root'},
        'worker': {'graceful_shutdown_timeout': 30},
    }


@pytest.fixture
def make_worker(tmp_path, cinder):
    workers = []

    def make(**options):
        directory = tmp_path / ('w%d' % len(workers))
        worker = Worker(directory, worker_sections(directory, cinder.url), **options)
        workers.append(worker)
        return worker
    yield make
    for worker in workers:
        worker.stop()



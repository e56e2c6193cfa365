"""Cluster fixtures: the local 3-node RabbitMQ cluster (tools/rabbit-cluster), a vhost of
each test's own on it, the Cinder stand-in, the worker, the audit consumer and the
controller, all configured for quorum queues.

The cluster is brought up once, before the first of these tests, if it is not up
already, and brought down after the last of them only if it was started here (so it
does not idle through the rest of a whole-suite run). Select them with ``-m cluster``.
"""
import time
import uuid

import pytest

from tests.cluster import bus
from tests.functional.conftest import worker_sections
from tests.functional.fake_cinder import FakeCinder
from tests.harness import Worker

rc = bus.rc


def pytest_configure(config):
    config.addinivalue_line('markers', 'cluster: needs the local 3-node RabbitMQ cluster '
                                       '(tools/rabbit-cluster; the session starts it)')


def pytest_collection_modifyitems(items):
    for item in items:
        if 'tests/cluster' in str(item.fspath):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope='package')
def cluster():
    started = False
    if not rc.is_up():
        t0 = time.monotonic()
        started = rc.up(log=rc.quiet)
        print('cluster up in %.1f s' % (time.monotonic() - t0))
    yield rc
    if started:
        rc.down(log=rc.quiet)


@pytest.fixture
def vhost(cluster):
    """A vhost of the test's own: every queue of it goes when the test ends."""
    if not rc.is_up():  # a test before this one left a node down or paused
        rc.up(log=rc.quiet)
    name = 'aw-%s' % uuid.uuid4().hex[:8]
    via = rc.NODES[0]
    via.ctl('add_vhost', name)
    via.ctl('set_permissions', '-p', name, rc.USER, '.*', '.*', '.*')
    yield name
    if not rc.is_up():
        rc.up(log=rc.quiet)
    next(n for n in rc.NODES if n.state() == 'running').ctl('delete_vhost', name,
                                                            timeout=120)


@pytest.fixture
def cinder():
    server = FakeCinder().start()
    yield server
    server.stop()


@pytest.fixture
def make_worker(tmp_path, cinder, vhost):
    workers = []

    def make(**options):
        directory = tmp_path / ('w%d' % len(workers))
        sections = worker_sections(directory, cinder.url)
        url = rc.transport_url(vhost)
        sections['DEFAULT'].update(transport_url=url, debug='false')
        sections['oslo_messaging_rabbit'] = dict(bus.RABBIT_OPTIONS)
        sections['oslo_concurrency'] = {'lock_path': directory / 'oslo-locks'}
        worker = Worker(directory, sections, **options)
        worker.transport_url, worker.vhost = url, vhost
        workers.append(worker)
        return worker
    yield make
    for worker in workers:
        worker.stop()


@pytest.fixture
def scene(tmp_path, make_worker, cinder):
    """start(**worker options) -> (worker, audit, controller), all on the cluster."""
    made = []

    def start(**options):
        worker = make_worker(**options).start(timeout=60)
        audit = bus.Audit(tmp_path / 'audit', worker).start()
        ctl = bus.Controller(worker.config)
        made.extend([audit, ctl])
        return worker, audit, ctl
    yield start
    for thing in reversed(made):
        thing.close() if isinstance(thing, bus.Controller) else thing.stop()

"""tools/lib/cinder_backend.py's choice to restart cinder-volume: the CI failure of
2026-12-01 (a machine whose Ceph had gone: tools/local-cloud started cinder-volume with
the ceph backend while Ceph was down, its RBD driver stayed uninitialised, and
tools/storage-stack up waited 120 s for a pool that never came).

Cinder and tools/local-cloud are stand-ins here; daemons.started_at reads real processes.
"""
import datetime
import subprocess
import time
import types

import pytest

from tests.unit.tools.toollib import SLEEP_AS_MARKER
from tests.unit.tools.toollib import daemons
from tests.unit.tools.toollib import load


def test_started_at_reads_a_real_process_start_and_orders_two(marker):
    first = subprocess.Popen(['bash', '-c', SLEEP_AS_MARKER, marker])
    time.sleep(0.05)
    second = subprocess.Popen(['bash', '-c', SLEEP_AS_MARKER, marker])
    try:
        a, b = daemons.started_at(first.pid), daemons.started_at(second.pid)
        assert abs(a - time.time()) < 60      # seconds since the epoch, not since boot
        assert a <= b
    finally:
        for p in (first, second):
            p.kill()
            p.wait()
    assert daemons.started_at(first.pid) is None   # reaped: gone


@pytest.mark.parametrize('volume, ceph, stale', [
    (100.0, 200.0, True),     # cinder-volume started before this Ceph: set up against none
    (200.0, 100.0, False),    # after it: its set-up saw this cluster
    (None, 100.0, False),     # unknown times never force a restart
    (100.0, None, False),
])
def test_stale_only_when_cinder_volume_started_before_the_ceph_of_now(volume, ceph, stale):
    assert load('cinder_backend').stale(volume, ceph) is stale


class FakeType:
    def __init__(self, keys):
        self.keys = dict(keys)

    def get_keys(self):
        return self.keys

    def set_keys(self, keys):
        self.keys.update(keys)


class World:
    """cinder-volume (pid 42, with the snippet), a Cinder whose pool appears only after
    a restart when `needs_restart`, and tools/local-cloud's stop/start-service."""

    def __init__(self, cb, monkeypatch, volume_started, needs_restart):
        self.started, self.calls, self.needs_restart = volume_started, [], needs_restart
        self.types = {cb.DEFAULT_TYPE: FakeType({}), cb.VOLUME_TYPE: FakeType({})}
        monkeypatch.setattr(cb, 'cloud_env', lambda paths: {'ADMIN_PASSWORD': 'x'})
        monkeypatch.setattr(cb, 'admin_cinder', lambda env: object())
        monkeypatch.setattr(cb, '_types', lambda cinder: self.types)
        monkeypatch.setattr(cb, 'volume_process', lambda paths: (42, True))
        monkeypatch.setattr(cb.daemons, 'started_at', lambda pid: self.started)
        monkeypatch.setattr(cb, '_local_cloud', self.local_cloud)
        monkeypatch.setattr(cb, '_pool_reported', self.pool)
        monkeypatch.setattr(cb, 'wait_until', self.wait_until)
        self.waits, self.since = [], []

    def local_cloud(self, paths, *args):
        self.calls.append(args)
        if args[0] == 'start-service':
            self.started, self.needs_restart = 1000.0, False

    def pool(self, cinder, since=None):
        self.since.append(since)
        return None if self.needs_restart else 'host@ceph#ceph'

    def wait_until(self, predicate, timeout, what, **kw):
        self.waits.append(timeout)
        value = predicate()
        if not value:
            raise self.failure('timed out after %ss waiting for %s' % (timeout, what))
        return value


@pytest.fixture
def cb():
    return load('cinder_backend')


PATHS = types.SimpleNamespace(cloud_venv='/nonexistent', cloud_home='/nonexistent',
                              cinder_snippet='/nonexistent/cinder-ceph.conf')
RESTART = [('stop-service', 'cinder-volume'), ('start-service', 'cinder-volume')]


def test_cinder_volume_started_before_ceph_is_restarted_before_the_wait(cb, monkeypatch):
    world = World(cb, monkeypatch, volume_started=100.0, needs_restart=True)
    world.failure = cb.Failure
    assert 'host@ceph#ceph' in cb.ensure(PATHS, ceph_started=500.0)
    assert world.calls == RESTART
    assert world.waits == [60]          # found at the first wait: no 120 s spent for nothing
    assert world.types[cb.DEFAULT_TYPE].keys == {'volume_backend_name': 'fake'}
    assert world.types[cb.VOLUME_TYPE].keys == {'volume_backend_name': 'ceph'}


def test_cinder_volume_started_after_ceph_is_kept(cb, monkeypatch):
    world = World(cb, monkeypatch, volume_started=600.0, needs_restart=False)
    world.failure = cb.Failure
    cb.ensure(PATHS, ceph_started=500.0)
    assert world.calls == []


def test_no_pool_after_the_first_wait_restarts_once_then_reports(cb, monkeypatch):
    # start times say nothing (cinder-volume started while Ceph was not yet serving)
    world = World(cb, monkeypatch, volume_started=600.0, needs_restart=True)
    world.failure = cb.Failure
    assert 'host@ceph#ceph' in cb.ensure(PATHS, ceph_started=500.0)
    assert world.calls == RESTART
    assert world.waits == [60, 90]


def test_a_pool_that_never_comes_fails_after_one_restart(cb, monkeypatch):
    world = World(cb, monkeypatch, volume_started=600.0, needs_restart=True)
    world.failure = cb.Failure
    world.local_cloud = lambda paths, *args: world.calls.append(args)   # restart does not help
    monkeypatch.setattr(cb, '_local_cloud', world.local_cloud)
    with pytest.raises(cb.Failure, match='ceph pool'):
        cb.ensure(PATHS, ceph_started=500.0)
    assert world.calls == RESTART       # once, not in a loop


class Pools:
    def __init__(self, *pools):
        self.pools = [types.SimpleNamespace(name=name, _info={'capabilities': caps})
                      for name, caps in pools]

    def list(self, detailed=False):
        return self.pools


def test_after_a_restart_only_a_report_made_since_counts(cb):
    """The scheduler keeps a backend's last capabilities across a restart of
    cinder-volume, also when the new driver failed its set-up: a stale entry is no
    proof that the restarted backend works."""
    cinder = types.SimpleNamespace(pools=Pools(
        ('h@fake#fake', {'timestamp': '2026-12-01T16:50:00.000000'}),
        ('h@ceph#ceph', {'timestamp': '2026-12-01T16:48:18.446153'})))
    at = datetime.datetime(2026, 12, 1, 16, 49, tzinfo=datetime.timezone.utc).timestamp()
    assert cb._pool_reported(cinder) == 'h@ceph#ceph'               # no restart: any
    assert cb._pool_reported(cinder, since=at) is None               # reported before it
    assert cb._pool_reported(cinder, since=at - 60) == 'h@ceph#ceph'
    cinder.pools.pools[1]._info['capabilities'] = {'timestamp': None}
    assert cb._pool_reported(cinder, since=at - 60) is None          # unknown: not fresh


def test_the_wait_after_a_restart_asks_for_a_fresh_report(cb, monkeypatch):
    world = World(cb, monkeypatch, volume_started=100.0, needs_restart=True)
    world.failure = cb.Failure
    monkeypatch.setattr(cb.time, 'time', lambda: 1000.0)
    cb.ensure(PATHS, ceph_started=500.0)
    assert world.since == [999.0]      # restarted at 1000: a report from 999 on
    world = World(cb, monkeypatch, volume_started=600.0, needs_restart=False)
    world.failure = cb.Failure
    cb.ensure(PATHS, ceph_started=500.0)
    assert world.since == [None]       # kept: whatever it reported counts

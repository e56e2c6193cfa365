"""tools/local-cloud's process handling (through tools/lib/daemons_cli.py) on a cloud home
of its own, with fake services: never the real cloud's home, processes or ports.

The fake venv's cinder-scheduler and cinder-volume are bash scripts that fork one worker,
both carrying "$VENV/bin/NAME " in their cmdline as the real ones do; the fake postgres is
a sleep whose cmdline holds "-D $STATE/pg". Needs root (local-cloud refuses otherwise).
"""
import fcntl
import os
import re
import shutil
import signal
import subprocess
import uuid

import pytest

from tests.unit.tools.toollib import ROOT
from tests.unit.tools.toollib import daemons

SCRIPT = str(ROOT / 'tools' / 'local-cloud')

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which('flock'),
                                reason='tools/local-cloud needs root and flock')

FAKE_SERVICE = '''#!/bin/bash
# a fake OpenStack service: this process and one worker, both with "$0 " in their cmdline
[[ ${1:-} == --worker ]] || { "$0" --worker "$@" & }
sleep 300 & s=$!
trap 'kill $s; exit 0' TERM
wait $s
'''
IDS = ('ADMIN_PROJECT_ID DEMO_PROJECT_ID ALT_DEMO_PROJECT_ID SERVICE_PROJECT_ID DEMO_USER_ID '
       'ALT_DEMO_USER_ID NOVA_USER_ID').split()


@pytest.fixture
def home(tmp_path):
    home = tmp_path / ('cloud-%s' % uuid.uuid4().hex[:8])
    state = home / 'state'
    for d in ('venv/bin', 'state/pids', 'state/cinder', 'state/pg', 'logs'):
        (home / d).mkdir(parents=True)
    for name in ('cinder-scheduler', 'cinder-volume'):
        (home / 'venv/bin' / name).write_text(FAKE_SERVICE)
        (home / 'venv/bin' / name).chmod(0o755)
    (state / 'cinder/cinder.conf').write_text('# fake\n')
    (state / 'bringup-seconds').write_text('total=1.0\n')
    (state / 'keystone-ids.env').write_text(''.join('%s=x\n' % v for v in IDS))
    yield home
    for pid in daemons.find(str(home)):   # whatever is left, by PID, only this home's
        os.kill(pid, signal.SIGKILL)


def local_cloud(home, *args):
    env = dict(os.environ, ATTACHWORKER_CLOUD_HOME=str(home))
    env.pop('ATTACHWORKER_STORAGE_HOME', None)
    return subprocess.run(['bash', SCRIPT, *args], env=env, capture_output=True, text=True,
                          timeout=120)


def fake_postgres(home):
    """A process with postgres's marker and its PID file (pg_ctl finds no server there)."""
    proc = subprocess.Popen(['bash', '-c', 'exec -a "postgres -D $0" sleep 300',
                             str(home / 'state/pg')], start_new_session=True)
    (home / 'state/pids/postgres.pid').write_text('%d\n' % proc.pid)
    return proc


def pid_of(home, name):
    return daemons.read_pidfile(str(home / 'state/pids' / ('%s.pid' % name)))


def test_start_stop_status_and_down(home):
    pg = fake_postgres(home)
    marker = '%s/venv/bin/cinder-scheduler ' % home

    r = local_cloud(home, 'start-service', 'cinder-scheduler')
    assert r.returncode == 0, r.stdout + r.stderr
    pid = pid_of(home, 'cinder-scheduler')
    assert '[local-cloud] cinder-scheduler is running (pid %d)' % pid in r.stdout
    assert os.getsid(pid) == pid
    with open(home / '.lock', 'w') as f:   # the daemon did not keep the script's fd 9
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert 'PID_CINDER_SCHEDULER=%d' % pid in (home / 'cloud.env').read_text()
    r = local_cloud(home, 'start-service', 'cinder-scheduler')
    assert '[local-cloud] cinder-scheduler is already running' in r.stdout

    r = local_cloud(home, 'status')
    assert r.returncode == 3   # keystone and cinder-api are not there
    assert re.search(r'postgres +ok +process %d\n' % pg.pid, r.stdout), r.stdout
    assert re.search(r'cinder-scheduler +ok +process %d\n' % pid, r.stdout), r.stdout
    assert re.search(r'keystone +DOWN', r.stdout)

    workers = [p for p in daemons.descendants(pid) if daemons.is_ours(p, marker)]
    assert len(workers) == 1
    r = local_cloud(home, 'stop-service', 'cinder-scheduler')
    assert r.returncode == 0, r.stderr
    assert re.search(r'^\[local-cloud\] stopped cinder-scheduler \(pid %d\) in \d+\.\ds$' % pid,
                     r.stdout, re.M), r.stdout
    assert re.search(r'^\[local-cloud\] stopped cinder-scheduler workers \(pid %d\) in '
                     % workers[0], r.stdout, re.M), r.stdout
    assert not daemons.find(marker)
    assert pid_of(home, 'cinder-scheduler') is None
    assert 'PID_CINDER_SCHEDULER=none' in (home / 'cloud.env').read_text()

    # a stray (its PID file lost) and a PID file whose PID is now someone else's
    assert local_cloud(home, 'start-service', 'cinder-scheduler').returncode == 0
    stray = pid_of(home, 'cinder-scheduler')
    (home / 'state/pids/cinder-scheduler.pid').unlink()
    other = subprocess.Popen(['sleep', '300'])
    (home / 'state/pids/cinder-volume.pid').write_text('%d\n' % other.pid)
    try:
        r = local_cloud(home, 'down')
        assert r.returncode == 0, r.stderr
        assert re.search(r'^\[local-cloud\] stopped stray cinder-scheduler \(pid %d \d+\) in '
                         % stray, r.stdout, re.M), r.stdout
        assert re.search(r'^\[local-cloud\] stopped postgres \(pid %d\) in ' % pg.pid,
                         r.stdout, re.M), r.stdout   # pg_ctl found no server: TERM
        assert 'cinder-volume' not in r.stdout
        assert other.poll() is None   # not ours: never signalled
        assert pg.wait(5) == -signal.SIGTERM
        assert not daemons.find(str(home))
        assert not list((home / 'state/pids').iterdir())
        assert '[local-cloud] down in ' in r.stdout
    finally:
        other.kill()
        other.wait()


def test_a_service_that_dies_at_once(home):
    fake_postgres(home)
    (home / 'venv/bin/cinder-volume').write_text('#!/bin/bash\necho "boom: no backend" >&2\n'
                                                 'exit 1\n')
    r = local_cloud(home, 'start-service', 'cinder-volume')
    assert r.returncode == 1
    log = home / 'logs/cinder-volume.stdout'
    assert '[local-cloud] %s exited with status 1; see %s' % (home / 'venv/bin/cinder-volume',
                                                             log) in r.stderr
    assert '[local-cloud] boom: no backend' in r.stderr   # the log's tail
    assert '[local-cloud] ERROR: cinder-volume exited at once; see %s' % log in r.stderr
    assert not daemons.find('%s/venv/bin/cinder-volume ' % home)


def test_start_service_needs_postgres_and_a_known_name(home):
    r = local_cloud(home, 'start-service', 'cinder-scheduler')
    assert r.returncode == 1 and 'postgres is not running' in r.stderr
    r = local_cloud(home, 'stop-service', 'nova')
    assert r.returncode == 1 and 'usage: stop-service NAME' in r.stderr

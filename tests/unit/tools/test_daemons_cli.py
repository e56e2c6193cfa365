"""tools/lib/daemons_cli.py, as tools/local-cloud runs it: the system python3 -I (stdlib
only, no venv), real short-lived processes, never mocks.

Each test's processes carry a marker of their own (``exec -a MARKER sleep``); whatever is
left is killed by PID at the end.
"""
import fcntl
import os
import pathlib
import signal
import subprocess
import sys
import time
import uuid

from tests.unit.tools.toollib import ROOT
from tests.unit.tools.toollib import SLEEP_AS_MARKER
from tests.unit.tools.toollib import daemons
from tests.unit.tools.toollib import slept_as_marker
from tests.unit.tools.toollib import wait_for

CLI = str(ROOT / 'tools' / 'lib' / 'daemons_cli.py')
PYTHON = '/usr/bin/python3' if os.path.exists('/usr/bin/python3') else sys.executable


def cli(*args, marker=None, timeout=60, **kw):
    """Run the CLI; marker goes in $DAEMONS_MARKER, as tools/local-cloud passes it."""
    env = dict(os.environ)
    env.pop('DAEMONS_MARKER', None)
    if marker:
        env['DAEMONS_MARKER'] = marker
    return subprocess.run([PYTHON, '-I', CLI, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, **kw)


def sleeper(marker, script=SLEEP_AS_MARKER):
    """A process of ours that is not our child once the CLI's start returns."""
    return subprocess.Popen(['bash', '-c', script, marker], start_new_session=True)


def test_start_detaches_writes_the_pid_file_and_running_finds_it(tmp_path, marker):
    pidfile, log = tmp_path / 'pids' / 'd.pid', tmp_path / 'logs' / 'd.log'
    r = cli('start', str(pidfile), '--log', str(log), '--', 'bash', '-c', SLEEP_AS_MARKER,
            marker, marker=marker)
    assert r.returncode == 0, r.stderr
    pid = int(r.stdout)
    assert pidfile.read_text() == '%d\n' % pid
    assert slept_as_marker(pid, marker)
    assert os.getsid(pid) == pid          # its own session, and the PID of that process
    assert 'exec -a' in log.read_text()   # a header line names the command

    r = cli('running', str(pidfile), marker=marker)
    assert (r.returncode, r.stdout) == (0, '%d\n' % pid)
    # -m instead of the environment; every -m must be there
    assert cli('running', str(pidfile), '-m', marker, '-m', '300').returncode == 0
    assert cli('running', str(pidfile), '-m', marker, '-m', '301').returncode == 1


def test_start_waits_for_a_process_title_set_a_moment_later(tmp_path, marker):
    # like gunicorn: the marker is in the cmdline only after a while ("$1-$2" is not yet)
    t0 = time.monotonic()
    r = cli('start', str(tmp_path / 'd.pid'), '--log', str(tmp_path / 'd.log'), '--wait', '5',
            '--', 'bash', '-c', 'sleep 1; exec -a "$1-$2" sleep 300', 'x', marker, 'late',
            marker=marker + '-late')
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 >= 1
    assert daemons.cmdline(int(r.stdout)) == [marker + '-late', '300']


def test_start_of_a_process_that_never_shows_its_marker_kills_it(tmp_path, marker):
    pidfile = tmp_path / 'd.pid'
    r = cli('start', str(pidfile), '--log', str(tmp_path / 'd.log'), '--wait', '0.5', '--',
            'bash', '-c', 'echo starting; exec -a "$0" sleep 300', marker + '-wrong',
            marker=marker + '-right')
    assert r.returncode == 1
    assert 'did not show' in r.stderr and 'starting' in r.stderr
    pid = daemons.read_pidfile(str(pidfile))
    assert daemons.cmdline(pid) is None   # killed, not left running unseen


def test_start_of_a_process_that_dies_at_once_reports_its_log_tail(tmp_path, marker):
    log = tmp_path / 'd.log'
    r = cli('start', str(tmp_path / 'd.pid'), '--log', str(log), '--prefix', '[t] ', '--',
            'bash', '-c', 'echo "Address already in use" >&2; exit 3', marker, marker=marker)
    assert r.returncode == 1
    assert r.stdout == ''
    lines = r.stderr.splitlines()
    assert lines[0].startswith('[t] bash exited with status 3; see %s' % log)
    assert '[t] Address already in use' in lines
    assert cli('running', str(tmp_path / 'd.pid'), marker=marker).returncode == 1


def test_start_passes_the_command_unchanged_and_no_inherited_fd(tmp_path, marker):
    # tools/local-cloud holds its lock on fd 9: a daemon that kept it would hold it forever
    lock, args = tmp_path / '.lock', tmp_path / 'args'
    script = 'exec 9>"$1"; flock -n 9 || exit 9; shift; exec "$@"'
    r = subprocess.run(
        ['bash', '-c', script, 'locker', str(lock), PYTHON, '-I', CLI, 'start',
         str(tmp_path / 'd.pid'), '--log', str(tmp_path / 'd.log'), '-m', marker, '--',
         'bash', '-c', 'echo "[$*]" >"$1"; ' + SLEEP_AS_MARKER, marker, str(args),
         '--', '--log', '-m'], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    pid = int(r.stdout)
    assert args.read_text() == '[%s -- --log -m]\n' % args
    assert sorted(os.listdir('/proc/%d/fd' % pid)) == ['0', '1', '2']
    assert 'DAEMONS_MARKER' not in pathlib.Path('/proc/%d/environ' % pid).read_text()
    with open(lock, 'w') as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)   # free: nobody else holds it


def test_running_and_stop_never_touch_a_reused_pid(tmp_path, marker):
    pidfile = tmp_path / 'd.pid'
    assert cli('running', str(pidfile), marker=marker).returncode == 1   # no file
    # the PID file names a live process that is not ours (the PID was reused)
    tag = 'aw-daemons-cli-other-%s' % uuid.uuid4().hex[:12]
    other = sleeper(tag)
    try:
        pidfile.write_text('%d\n' % other.pid)
        assert wait_for(lambda: daemons.is_ours(other.pid, tag))
        r = cli('running', str(pidfile), marker=marker)
        assert (r.returncode, r.stdout) == (1, '')
        r = cli('stop', str(pidfile), '--label', 'd', '--timeout', '1', marker=marker)
        assert (r.returncode, r.stdout, r.stderr) == (0, '', '')
        time.sleep(0.2)
        assert other.poll() is None                  # never signalled
        assert not pidfile.exists()                  # a stale PID file is removed
        pidfile.write_text('garbage\n')
        assert cli('running', str(pidfile), marker=marker).returncode == 1
    finally:
        other.kill()
        other.wait()


def test_an_empty_marker_is_refused(tmp_path, marker):
    for args, m in ((('sweep',), None), (('sweep',), '\n'), (('sweep', '-m', ''), marker)):
        r = cli(*args, marker=m)
        assert r.returncode == 2 and 'non-empty marker' in r.stderr


def test_stop_terms_the_service_then_its_orphaned_workers(tmp_path, marker):
    # the parent dies of SIGTERM and leaves both workers running: they are found first
    pidfile = tmp_path / 'd.pid'
    script = '(%s) & (%s) & wait' % (SLEEP_AS_MARKER, SLEEP_AS_MARKER)
    r = cli('start', str(pidfile), '--log', str(tmp_path / 'd.log'), '--', 'bash', '-c', script,
            marker, marker=marker)
    assert r.returncode == 0, r.stderr
    pid = int(r.stdout)
    assert wait_for(lambda: len([p for p in daemons.descendants(pid)
                                 if daemons.is_ours(p, marker)]) == 2)
    kids = [p for p in daemons.descendants(pid) if daemons.is_ours(p, marker)]
    d = cli('descendants', str(pid))
    assert set(kids) <= {int(p) for p in d.stdout.split()}

    r = cli('stop', str(pidfile), '--label', 'svc', '--kids-label', 'svc workers',
            '--prefix', '[local-cloud] ', marker=marker)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith('[local-cloud] stopped svc (pid %d) in ' % pid)
    assert lines[0].endswith('s')
    assert lines[1].startswith('[local-cloud] stopped svc workers (pid %s) in '
                               % ' '.join(map(str, kids)))
    assert not [p for p in [pid] + kids if daemons.is_ours(p, marker)]
    assert not pidfile.exists()
    r = cli('stop', str(pidfile), '--label', 'svc', marker=marker)   # again: nothing, silently
    assert (r.returncode, r.stdout) == (0, '')


def test_stop_kills_what_ignores_sigterm(tmp_path, marker):
    pidfile = tmp_path / 'd.pid'
    r = cli('start', str(pidfile), '--log', str(tmp_path / 'd.log'), '--', 'bash', '-c',
            'trap "" TERM; ' + SLEEP_AS_MARKER, marker, marker=marker)   # SIG_IGN survives exec
    pid = int(r.stdout)
    assert slept_as_marker(pid, marker)   # a TERM before the trap would kill bash
    t0 = time.monotonic()
    r = cli('stop', str(pidfile), '--label', 'stubborn', '--timeout', '1', marker=marker)
    assert time.monotonic() - t0 >= 1
    assert r.stdout == 'killed stubborn (pid %d) after it ignored SIGTERM for 1s\n' % pid
    assert not daemons.is_ours(pid, marker)


def test_sweep_stops_strays_only(tmp_path, marker):
    strays = [sleeper(marker) for _ in range(2)]   # PID files lost, as after a crashed "up"
    kept = sleeper(marker + '-kept')   # "MARKER-kept 300": no match for "MARKER "
    try:
        assert wait_for(lambda: all(daemons.is_ours(p.pid, marker) for p in strays + [kept]))
        # a trailing space anchors the end, as local-cloud's "$VENV/bin/cinder-api "
        r = cli('sweep', '--label', 'svc', '-m', marker + ' ')   # -m: we carry it ourselves
        assert r.returncode == 0, r.stderr
        pids = ' '.join(str(p.pid) for p in strays)
        assert r.stdout.startswith('stopped stray svc (pid %s) in ' % pids), r.stdout
        assert [p.wait(5) for p in strays] == [-signal.SIGTERM] * 2
        assert kept.poll() is None
        assert cli('sweep', '--label', 'svc', marker=marker + ' ').stdout == ''
    finally:
        for p in strays + [kept]:
            if p.poll() is None:
                p.kill()
            p.wait()

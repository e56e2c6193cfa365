"""tools/lib/daemons.py against real processes (bash and sleep), never mocks.

Each test's processes carry a marker of their own (``exec -a MARKER sleep``), and
whatever is left is killed by PID at the end, so a failing test leaves nothing behind.
"""
import os
import pathlib
import signal
import subprocess
import time
import uuid

import pytest

from tests.unit.tools.toollib import SLEEP_AS_MARKER
from tests.unit.tools.toollib import daemons
from tests.unit.tools.toollib import slept_as_marker
from tests.unit.tools.toollib import wait_for


def alive(pid, marker):
    return daemons.is_ours(pid, marker)


def test_start_in_foreground_writes_the_pid_file_and_detaches(tmp_path, marker):
    pidfile, log = str(tmp_path / 'run' / 'd.pid'), str(tmp_path / 'logs' / 'd.log')
    pid = daemons.start(['bash', '-c', SLEEP_AS_MARKER, marker], pidfile, marker, log)
    assert daemons.read_pidfile(pidfile) == pid
    assert daemons.running(pidfile, marker) == pid
    assert slept_as_marker(pid, marker)
    assert os.getsid(pid) == pid   # its own session: a Ctrl-C of the caller spares it
    assert 'exec -a' in pathlib.Path(log).read_text()   # the header line names the command

    assert daemons.stop_pidfile(pidfile, marker, 'd', log=lambda _: None) == 'stopped'
    assert not alive(pid, marker)
    assert not os.path.exists(pidfile)


def test_start_of_a_self_daemonizing_program_reads_its_pid_file(tmp_path, marker):
    pidfile, log = str(tmp_path / 'd.pid'), str(tmp_path / 'd.log')
    # like "libvirtd -d -p F": fork into the background, write F, the first process exits 0
    script = '(%s) </dev/null >/dev/null 2>&1 & echo $! > "$1"' % SLEEP_AS_MARKER
    pid = daemons.start(['bash', '-c', script, marker, pidfile], pidfile, marker, log,
                        daemonizes=True)
    assert slept_as_marker(pid, marker)
    assert daemons.running(pidfile, marker) == pid


def test_a_daemonizing_program_that_fails_raises_with_its_log(tmp_path, marker):
    log = str(tmp_path / 'd.log')
    with pytest.raises(daemons.StartError) as err:
        daemons.start(['bash', '-c', 'echo "no such config" >&2; exit 3', marker],
                      str(tmp_path / 'd.pid'), marker, log, daemonizes=True)
    assert 'status 3' in str(err.value) and 'no such config' in str(err.value)


def test_a_program_that_dies_at_once_raises_with_its_log(tmp_path, marker):
    with pytest.raises(daemons.StartError) as err:
        daemons.start(['bash', '-c', 'echo "port in use" >&2; exit 1', marker],
                      str(tmp_path / 'd.pid'), marker, str(tmp_path / 'd.log'))
    assert 'port in use' in str(err.value)


def test_a_pid_file_with_a_reused_or_bad_pid_is_not_ours(tmp_path, marker):
    pidfile = tmp_path / 'd.pid'
    assert daemons.running(str(pidfile), marker) is None           # no file
    pidfile.write_text('%d\n' % os.getpid())                        # alive, but not ours
    assert daemons.running(str(pidfile), marker) is None
    pidfile.write_text('garbage\n')
    assert daemons.running(str(pidfile), marker) is None
    assert daemons.is_ours(os.getpid(), 'pytest') or daemons.is_ours(os.getpid(), 'python')


def test_every_string_of_a_tuple_marker_must_be_there(tmp_path, marker):
    pid = daemons.start(['bash', '-c', SLEEP_AS_MARKER, marker], str(tmp_path / 'd.pid'),
                        marker, str(tmp_path / 'd.log'))
    assert daemons.is_ours(pid, (marker, '300'))
    assert not daemons.is_ours(pid, (marker, '301'))


def test_descendants_include_grandchildren(tmp_path, marker):
    script = 'bash -c "sleep 301 & wait" & sleep 302 & wait'
    pid = daemons.start(['bash', '-c', script, marker], str(tmp_path / 'd.pid'), marker,
                        str(tmp_path / 'd.log'))
    # a forked child shows its parent's argv until it execs: wait for the execs
    assert wait_for(lambda: sorted(' '.join(daemons.cmdline(p) or ['gone'])
                                   for p in daemons.descendants(pid)) ==
                    ['bash -c sleep 301 & wait', 'sleep 301', 'sleep 302'])
    for p in daemons.descendants(pid):
        os.kill(p, signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)


def test_cpu_ticks_count_what_a_process_spent_and_nothing_once_it_is_gone(tmp_path):
    busy = subprocess.Popen(['bash', '-c', 'while :; do :; done'])
    idle = subprocess.Popen(['sleep', '300'])
    try:
        assert wait_for(lambda: daemons.cpu_ticks(busy.pid)[0] >= os.sysconf('SC_CLK_TCK') // 5)
        assert sum(daemons.cpu_ticks(idle.pid)) < sum(daemons.cpu_ticks(busy.pid))
    finally:
        for proc in (busy, idle):
            proc.kill()
            proc.wait()
    assert daemons.cpu_ticks(busy.pid) == (0, 0)


def test_stop_sends_term_first(tmp_path, marker):
    pid = daemons.start(['bash', '-c', SLEEP_AS_MARKER, marker], str(tmp_path / 'd.pid'),
                        marker, str(tmp_path / 'd.log'))
    lines = []
    t0 = time.monotonic()
    assert daemons.stop([pid], marker, 'sleeper', timeout=10, log=lines.append) == 'stopped'
    assert time.monotonic() - t0 < 2
    assert not alive(pid, marker)
    assert lines and lines[0].startswith('stopped sleeper (pid %d)' % pid)


def test_stop_kills_what_ignores_term_after_the_timeout(tmp_path, marker):
    # SIG_IGN survives exec: this sleep ignores SIGTERM
    script = 'trap "" TERM; ' + SLEEP_AS_MARKER
    pid = daemons.start(['bash', '-c', script, marker], str(tmp_path / 'd.pid'), marker,
                        str(tmp_path / 'd.log'))
    assert slept_as_marker(pid, marker)   # a TERM before the trap would kill bash
    lines = []
    t0 = time.monotonic()
    assert daemons.stop([pid], marker, 'stubborn', timeout=0.6, log=lines.append) == 'killed'
    assert time.monotonic() - t0 >= 0.6
    assert not alive(pid, marker)
    assert 'killed stubborn' in lines[0] and 'STILL' not in lines[0]


def test_stop_never_signals_a_process_without_the_marker(tmp_path, marker):
    pid = daemons.start(['bash', '-c', SLEEP_AS_MARKER, marker], str(tmp_path / 'd.pid'),
                        marker, str(tmp_path / 'd.log'))
    assert daemons.stop([pid], marker + '-other', 'x', timeout=0.2) is None
    assert daemons.stop_pidfile(str(tmp_path / 'd.pid'), 'not-' + marker, 'x') is None
    time.sleep(0.2)
    assert alive(pid, marker)


def test_stop_pidfile_also_stops_orphaned_children(tmp_path, marker):
    # the parent dies of SIGTERM and leaves both children running: they must be found first
    script = '(%s) & (%s) & wait' % (SLEEP_AS_MARKER, SLEEP_AS_MARKER)
    pidfile = str(tmp_path / 'd.pid')
    pid = daemons.start(['bash', '-c', script, marker], pidfile, marker, str(tmp_path / 'd.log'))
    assert wait_for(lambda: len([p for p in daemons.descendants(pid) if alive(p, marker)]) == 2)
    kids = daemons.descendants(pid)
    assert daemons.stop_pidfile(pidfile, marker, 'parent', log=lambda _: None) == 'stopped'
    assert not alive(pid, marker)
    assert not [k for k in kids if alive(k, marker)]


def test_sweep_stops_strays_and_spares_others(tmp_path, marker):
    strays = [daemons.start(['bash', '-c', SLEEP_AS_MARKER, marker], str(tmp_path / ('%d.pid' % i)),
                            marker, str(tmp_path / 'd.log')) for i in range(2)]
    for i in range(2):
        os.unlink(tmp_path / ('%d.pid' % i))   # PID files lost, as after a crashed "up"
    other = 'aw-daemons-keep-%s' % uuid.uuid4().hex[:12]
    kept = daemons.start(['bash', '-c', SLEEP_AS_MARKER, other], str(tmp_path / 'k.pid'), other,
                         str(tmp_path / 'd.log'))
    found = daemons.sweep(marker, 'sleeper', timeout=5, log=lambda _: None)
    assert sorted(found) == sorted(strays)
    assert not [p for p in strays if alive(p, marker)]
    assert alive(kept, other)
    os.kill(kept, signal.SIGKILL)


def test_sweep_never_takes_a_process_on_a_terminal_for_a_stray(tmp_path, marker):
    """``less /var/tmp/attachworker-cloud/venv/bin/cinder-volume`` carries that service's
    marker; an operator runs it on a terminal, where no daemon of ours ever runs."""
    primary, secondary = os.openpty()
    # a session of its own whose leader opens the pty: it becomes its terminal
    pager = subprocess.Popen(['setsid', 'bash', '-c', 'exec 0<>"$1" 1>&0 2>&0; '
                              'exec -a "less $0" sleep 300', marker, os.ttyname(secondary)])
    os.close(secondary)
    stray = daemons.start(['bash', '-c', SLEEP_AS_MARKER, marker], str(tmp_path / 's.pid'),
                          marker, str(tmp_path / 'd.log'))
    os.unlink(tmp_path / 's.pid')
    try:
        assert wait_for(lambda: daemons.is_ours(pager.pid, marker))   # it does carry it
        assert daemons.has_terminal(pager.pid) and not daemons.has_terminal(stray)
        lines = []
        assert daemons.sweep(marker, 'sleeper', timeout=5, log=lines.append) == [stray]
        assert pager.poll() is None and not alive(stray, marker)
        assert any('not touching pid %d' % pager.pid in line for line in lines), lines
    finally:
        pager.kill()
        pager.wait()
        os.close(primary)


def test_a_process_that_stopped_being_ours_is_not_signalled(tmp_path, marker):
    # it carries the marker when listed, then becomes something else (an exec; a PID
    # reused is the same from here): the signal checks again, on the process it reaches
    proc = subprocess.Popen(['bash', '-c', 'exec -a "$0" bash -c "sleep 0.5; exec sleep 300"',
                             marker], start_new_session=True)
    try:
        assert wait_for(lambda: daemons.is_ours(proc.pid, marker))
        listed = [proc.pid]
        assert wait_for(lambda: not daemons.is_ours(proc.pid, marker), 10)
        daemons._signal(listed, signal.SIGTERM, marker)
        time.sleep(0.2)
        assert proc.poll() is None               # not ours any more: left alone
        daemons._signal([proc.pid + 10 ** 7], signal.SIGTERM, marker)  # no such PID: quiet
    finally:
        proc.kill()
        proc.wait()


def test_find_matches_substrings_so_markers_must_be_unique(tmp_path, marker):
    # a marker is a substring test: "X" also matches "X-keep"; give each daemon a full path
    longer = marker + '-keep'
    pid = daemons.start(['bash', '-c', SLEEP_AS_MARKER, longer], str(tmp_path / 'k.pid'), longer,
                        str(tmp_path / 'd.log'))
    assert pid in daemons.find(marker)
    assert pid not in daemons.find(marker + ' ')   # a trailing space anchors the end
    os.kill(pid, signal.SIGKILL)


def test_an_empty_marker_raises_as_it_would_match_every_process(tmp_path):
    for bad in ('', (), ('x', '')):
        with pytest.raises(ValueError):
            daemons.is_ours(os.getpid(), bad)
        with pytest.raises(ValueError):
            daemons.running(str(tmp_path / 'none.pid'), bad)


def test_stop_pidfile_names_the_children_as_told(tmp_path, marker):
    script = '(%s) & wait' % SLEEP_AS_MARKER
    pidfile = str(tmp_path / 'd.pid')
    pid = daemons.start(['bash', '-c', script, marker], pidfile, marker, str(tmp_path / 'd.log'))
    assert wait_for(lambda: [p for p in daemons.descendants(pid) if alive(p, marker)])
    lines = []
    daemons.stop_pidfile(pidfile, marker, 'svc', log=lines.append, kids_label='svc workers')
    assert [line.split(' (')[0] for line in lines] == ['stopped svc', 'stopped svc workers']


def test_a_started_process_that_never_shows_its_marker_is_killed(tmp_path, marker):
    pidfile = str(tmp_path / 'd.pid')
    with pytest.raises(daemons.StartError) as err:
        daemons.start(['bash', '-c', SLEEP_AS_MARKER, marker + '-wrong'], pidfile,
                      marker + '-right', str(tmp_path / 'd.log'), timeout=0.3)
    assert 'did not show' in str(err.value)
    assert daemons.cmdline(daemons.read_pidfile(pidfile)) is None

"""Our own processes, handled one way: for tools/storage-stack, tools/rabbit-cluster and
(through the command line of tools/lib/daemons_cli.py) tools/local-cloud (issue 12).

A process counts as ours only while its ``/proc/PID/cmdline`` still contains every
string of its *marker* (a str or a tuple of str; each holds something unique to our
state directory, e.g. a config file's path). A PID file alone proves nothing: the PID
may have been reused. Nothing here signals a process that is not ours: it is checked
again through a pidfd at the moment of each signal, and a sweep never takes a process
that has a controlling terminal (an operator's pager on one of our paths) for a stray.

    start(argv, pidfile, marker, log)                 # detached, in its own session
    start(argv, pidfile, marker, log, daemonizes=True)  # it forks itself and writes pidfile
    running(pidfile, marker) -> pid or None
    stop_pidfile(pidfile, marker, label)              # and its descendants: TERM, wait, KILL
    sweep(marker, label)                              # ours, whatever their PID files say

Reads /proc only (psutil is not in the project's venv; slim images have no ps).
"""
import os
import signal
import subprocess
import time

PROC = '/proc'


def _markers(marker):
    markers = (marker,) if isinstance(marker, str) else tuple(marker)
    if not markers or not all(markers):
        raise ValueError('empty marker %r: it would match every process' % (marker,))
    return markers


def cmdline(pid):
    """argv of PID as a list, or None when it is gone (a zombie's is empty: also None)."""
    try:
        with open('%s/%d/cmdline' % (PROC, pid), 'rb') as f:
            raw = f.read()
    except (OSError, ValueError):
        return None
    if not raw:
        return None
    return raw.rstrip(b'\0').decode('utf-8', 'replace').split('\0')


def is_ours(pid, marker):
    markers = _markers(marker)
    argv = cmdline(pid) if pid else None
    if argv is None:
        return False
    text = ' '.join(argv) + ' '
    return all(m in text for m in markers)


def read_pidfile(path):
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def running(pidfile, marker):
    """The PID in pidfile if that process is still ours, else None."""
    _markers(marker)
    pid = read_pidfile(pidfile)
    return pid if pid and is_ours(pid, marker) else None


def _all_pids():
    for name in os.listdir(PROC):
        if name.isdigit():
            yield int(name)


def _stat(pid):
    """Fields of /proc/PID/stat after "(comm)": [state, ppid, pgrp, session, tty_nr,
    ...] (comm may itself contain spaces and parentheses); None when it is gone."""
    try:
        with open('%s/%d/stat' % (PROC, pid)) as f:
            return f.read().rsplit(')', 1)[1].split()
    except (OSError, IndexError):
        return None


def _ppid(pid):
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def cpu_ticks(pid):
    """(user, system) CPU time pid has used, in clock ticks ((0, 0) when it is gone)."""
    fields = _stat(pid)
    return (int(fields[11]), int(fields[12])) if fields else (0, 0)


def has_terminal(pid):
    """Does pid have a controlling terminal? A daemon of ours never has one (started
    in its own session, or daemonizing itself); a pager or an editor an operator runs
    on one of our paths has."""
    fields = _stat(pid)
    return bool(fields) and int(fields[4]) != 0


def started_at(pid):
    """When pid started, in seconds since the epoch (None when it is gone)."""
    fields = _stat(pid)
    try:
        with open('%s/stat' % PROC) as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith('btime '))
        return boot + int(fields[19]) / os.sysconf('SC_CLK_TCK')
    except (OSError, ValueError, IndexError, StopIteration, TypeError):
        return None


def descendants(pid):
    """Every descendant of pid (children first, then theirs), from one pass over /proc."""
    kids = {}
    for p in _all_pids():
        parent = _ppid(p)
        if parent is not None:
            kids.setdefault(parent, []).append(p)
    found, queue = [], [pid]
    while queue:
        for child in kids.get(queue.pop(0), ()):
            found.append(child)
            queue.append(child)
    return found


def find(marker, exclude=()):
    """Every process whose cmdline carries marker (never this process)."""
    skip = set(exclude) | {os.getpid()}
    return [p for p in _all_pids() if p not in skip and is_ours(p, marker)]


def _wait_gone(pids, marker, timeout):
    deadline = time.monotonic() + timeout
    left = [p for p in pids if is_ours(p, marker)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if is_ours(p, marker)]
    return left


def _signal(pids, sig, marker):
    """Signal each of pids that is still ours, through a pidfd: the process checked is
    the one signalled, even if it ended and its PID was reused in between."""
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        except OSError:   # a kernel without pidfds (< 5.3): the old race remains
            fd = None
        try:
            if not is_ours(pid, marker):
                continue
            if fd is None:
                os.kill(pid, sig)
            else:
                # the pidfd's process still lives, so /proc/PID was its own: send
                signal.pidfd_send_signal(fd, sig)
        except ProcessLookupError:
            pass
        finally:
            if fd is not None:
                os.close(fd)


def stop(pids, marker, label='process', timeout=20.0, log=print):
    """TERM the ones of pids that are ours, wait up to timeout, then KILL what is left.

    Returns 'stopped', 'killed' or None (nothing of ours was running).
    """
    pids = [p for p in pids if is_ours(p, marker)]
    if not pids:
        return None
    t0 = time.monotonic()
    _signal(pids, signal.SIGTERM, marker)
    left = _wait_gone(pids, marker, timeout)
    if not left:
        log('stopped %s (pid %s) in %.1fs' % (label, ' '.join(map(str, pids)),
                                              time.monotonic() - t0))
        return 'stopped'
    _signal(left, signal.SIGKILL, marker)
    still = _wait_gone(left, marker, 5.0)
    log('killed %s (pid %s) after it ignored SIGTERM for %.0fs%s'
        % (label, ' '.join(map(str, left)), timeout,
           ' - STILL THERE: %s' % still if still else ''))
    return 'killed'


def stop_pidfile(pidfile, marker, label, timeout=20.0, log=print, kids_marker=None,
                 kids_label=None):
    """Stop the daemon of pidfile if it is ours, then its descendants that carry
    kids_marker (default: the same marker; logged as kids_label); remove the PID file."""
    pid = running(pidfile, marker)
    result = None
    if pid:
        kids = descendants(pid)
        result = stop([pid], marker, label, timeout, log)
        stop(kids, kids_marker or marker, kids_label or label + ' children', timeout, log)
    try:
        os.unlink(pidfile)
    except FileNotFoundError:
        pass
    return result


def sweep(marker, label, timeout=20.0, log=print, exclude=()):
    """Stop every process of ours that carries marker: strays whose PID file is lost.

    A marker is a substring of the command line, so ``less <our path>`` carries it
    too: what has a controlling terminal is never taken for a stray (has_terminal)."""
    pids = []
    for pid in find(marker, exclude):
        if has_terminal(pid):
            log('not touching pid %d (%s): it carries the marker of %s but runs on a '
                'terminal, as no daemon of ours does' % (pid, ' '.join(cmdline(pid) or [])[:80],
                                                        label))
        else:
            pids.append(pid)
    if pids:
        stop(pids, marker, 'stray ' + label, timeout, log)
    return pids


class StartError(RuntimeError):
    pass


def _tail(path, lines=15):
    try:
        with open(path, errors='replace') as f:
            return ''.join(f.readlines()[-lines:])
    except OSError:
        return ''


def start(argv, pidfile, marker, log, env=None, cwd=None, daemonizes=False, timeout=30.0,
          settle=0.3):
    """Start argv detached (own session, stdin /dev/null, output appended to log).

    daemonizes=False: argv stays in the foreground; its PID is written to pidfile.
    daemonizes=True: argv forks into the background and writes pidfile itself (as
    ``libvirtd -d -p F`` or ``ceph-mon`` do); its first process must exit 0.
    Either way the PID must carry marker (within timeout), and still be alive after
    settle seconds. Returns the daemon's PID; raises StartError with the log's tail
    otherwise, after killing a foreground argv that is alive but never showed marker.
    """
    for d in {os.path.dirname(pidfile), os.path.dirname(log)}:
        os.makedirs(d or '.', exist_ok=True)
    if daemonizes:
        try:
            os.unlink(pidfile)
        except FileNotFoundError:
            pass
    with open(log, 'ab') as out:
        out.write(('--- %s: %s\n' % (time.strftime('%Y-%m-%dT%H:%M:%S'), ' '.join(argv)))
                  .encode())
        out.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                cwd=cwd, env=env, start_new_session=True, close_fds=True)
    deadline = time.monotonic() + timeout
    if daemonizes:
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise StartError('%s did not daemonize within %.0fs; see %s\n%s'
                             % (argv[0], timeout, log, _tail(log))) from None
        if rc != 0:
            raise StartError('%s exited with status %d; see %s\n%s'
                             % (argv[0], rc, log, _tail(log)))
        pid = None
        while time.monotonic() < deadline:
            pid = running(pidfile, marker)
            if pid:
                break
            time.sleep(0.05)
    else:
        pid = proc.pid
        with open(pidfile + '.tmp', 'w') as f:
            f.write('%d\n' % pid)
        os.replace(pidfile + '.tmp', pidfile)
        # an exec'ing wrapper (setsid, unshare, sh -c exec) shows the marker a moment later
        while time.monotonic() < deadline and proc.poll() is None and not is_ours(pid, marker):
            time.sleep(0.05)
    if pid and settle:
        time.sleep(settle)
    if not pid or not is_ours(pid, marker):
        how = 'is not running (no live process with %r)' % (marker,)
        if not daemonizes and proc.poll() is None:
            # our child, not reaped yet: neither its PID nor its group (it leads its own
            # session) can belong to anyone else
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            how = 'did not show %r within %.0fs: killed' % (marker, timeout)
        elif not daemonizes:
            how = 'exited with status %d' % proc.returncode
        raise StartError('%s %s; see %s\n%s' % (argv[0], how, log, _tail(log)))
    if not daemonizes:
        proc.returncode = 0   # it outlives us on purpose: no "still running" warning
    return pid

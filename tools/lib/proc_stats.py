"""What tools/bench-attach reads from /proc about a server and its children."""
import glob
import os

import daemons

TICKS = os.sysconf('SC_CLK_TCK')


def tree(pid: int) -> list:
    """pid and its living descendants (the children of ``[worker] workers = N``)."""
    return [pid] + daemons.descendants(pid)


def cpu_seconds(pid: int) -> tuple:
    """(user+system time of pid and its living descendants, their system time, pid's
    own user+system time), in seconds: one walk of /proc."""
    ticks = [daemons.cpu_ticks(p) for p in tree(pid)]
    return (sum(map(sum, ticks)) / TICKS, sum(t[1] for t in ticks) / TICKS,
            sum(ticks[0]) / TICKS)


def peak_rss_mib(pid: int) -> float:
    """VmHWM summed over pid and its living descendants."""
    total = 0.0
    for p in tree(pid):
        try:
            with open('/proc/%d/status' % p) as f:
                total += next((int(line.split()[1]) for line in f
                               if line.startswith('VmHWM:')), 0) / 1024
        except OSError:
            pass
    return total


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of every living thread of pid and
    its descendants (a thread that ended takes its count with it)."""
    total = 0
    for p in tree(pid):
        for status in glob.glob('/proc/%d/task/*/status' % p):
            try:
                with open(status) as f:
                    for line in f:
                        name, _, value = line.partition(':')
                        if name in ('voluntary_ctxt_switches',
                                    'nonvoluntary_ctxt_switches'):
                            total += int(value)
            except (OSError, ValueError):  # the thread ended meanwhile
                pass
    return total


def machine_ticks() -> tuple:
    """(idle, total) CPU ticks of the whole machine (/proc/stat), for 'machine busy'."""
    with open('/proc/stat') as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return values[3] + values[4], sum(values[:8])

"""What bench-attach reads from /proc: a server's whole process tree, every thread."""
import os
import subprocess
import sys
import threading
import time

from tests.unit.tools.toollib import load
from tests.unit.tools.toollib import wait_for

proc_stats = load('proc_stats')


def test_context_switches_count_every_thread_of_every_process_of_the_tree():
    child = subprocess.Popen([sys.executable, '-c', (
        'import threading, time\n'
        'def nap():\n'
        '    while True: time.sleep(0.0005)\n'
        'for _ in range(4): threading.Thread(target=nap, daemon=True).start()\n'
        'time.sleep(300)\n')])
    try:
        before = proc_stats.context_switches(os.getpid())
        # the child's threads sleep and wake without end (a switch each time), its
        # main thread sleeps once: the count must keep rising past thousands
        assert wait_for(lambda: proc_stats.context_switches(os.getpid()) - before >= 8000,
                        timeout=60)
    finally:
        child.kill()
        child.wait()


def test_cpu_seconds_of_the_tree_and_of_the_process_alone():
    stop = threading.Event()
    spinner = threading.Thread(target=lambda: [None for _ in iter(stop.is_set, True)])
    child = subprocess.Popen(['bash', '-c', 'while :; do :; done'])
    spinner.start()
    try:
        total0, _, own0 = proc_stats.cpu_seconds(os.getpid())
        time.sleep(1.0)
        total1, system1, own1 = proc_stats.cpu_seconds(os.getpid())
    finally:
        stop.set()
        spinner.join()
        child.kill()
        child.wait()
    assert own1 > own0  # this process's spinning thread
    assert total1 - total0 > own1 - own0  # and the child's loop on top
    assert 0 <= system1 <= total1

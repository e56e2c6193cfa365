"""The host's named locks (attachworker.worker.locks): one name at a time across the
threads and processes of the host, a killed holder's lock freed, no file per name."""
import errno
import os
import subprocess
import sys
import threading

import pytest

from attachworker import exception
from attachworker.worker import locks
from tests.harness import wait_for

HOLD = '''
import sys, time
import pytest

from attachworker import exception
from attachworker.worker import locks
with locks.instance_lock(sys.argv[1], sys.argv[2]):
    print('held', flush=True)
    time.sleep(600)
'''


class Taker(threading.Thread):
    """Another thread taking ``instance``'s lock; ``got`` once it holds it."""

    def __init__(self, state_path, instance):
        super().__init__(daemon=True)
        self.state_path, self.instance = state_path, instance
        self.got = threading.Event()
        self.error = None
        self.start()

    def run(self):
        try:
            with locks.instance_lock(self.state_path, self.instance):
                self.got.set()
        except BaseException as exc:  # noqa: BLE001 - asserted by the test
            self.error = exc

    def finished_holding(self, timeout=10):
        self.join(timeout)
        return self.got.is_set() and self.error is None


def taken_within(state_path, instance, timeout):
    """Does another thread get ``instance``'s lock within ``timeout`` seconds?"""
    taker = Taker(state_path, instance)
    return taker.got.wait(timeout), taker


def held_until_killed(state_path, holder):
    """``holder`` (a process running HOLD) has i-1: this process's taker waits for it,
    other names do not, and kill -9 of the holder lets the taker in."""
    try:
        assert holder.stdout.readline().strip() == 'held'
        got, taker = taken_within(state_path, 'i-1', 0.3)
        assert not got and taker.is_alive()
        assert taken_within(state_path, 'i-2', 5)[0]
        holder.kill()                        # kill -9: the kernel lets go of it
        assert taker.finished_holding()
    finally:
        holder.kill()
        holder.wait()


def test_one_thread_at_a_time_holds_a_name(tmp_path):
    state = str(tmp_path)
    with locks.instance_lock(state, 'i-1'):
        got, taker = taken_within(state, 'i-1', 0.3)
        assert not got and taker.is_alive()  # the second thread waits...
    assert taker.finished_holding()          # ...and has it once the first lets go


def test_a_waiter_whose_file_was_removed_takes_the_lock_on_the_one_now_there(tmp_path):
    """The lock file removed (a tmp cleaner, a hasty operator) while a process waits
    on it: that process ends up holding the file now at the path, so that it and
    every later taker still exclude each other."""
    state = str(tmp_path)
    path = os.path.join(locks.lock_path(state), locks.NAMES)
    with locks.instance_lock(state, 'i-1'):
        waiter = subprocess.Popen([sys.executable, '-c', HOLD, state, 'i-1'],
                                  stdout=subprocess.PIPE, text=True)
        assert wait_for(lambda: '-> OFDLCK' in open('/proc/locks').read(), 10)  # waits
        os.unlink(path)
    held_until_killed(state, waiter)   # the waiter holds the file now at the path


def test_a_program_this_process_runs_inherits_no_lock(tmp_path):
    state = str(tmp_path)
    with locks.instance_lock(state, 'i-1'):
        child = subprocess.Popen(['sleep', '30'], close_fds=False)
    try:
        assert taken_within(state, 'i-1', 5)[0]   # the exec'd child holds nothing
    finally:
        child.kill()
        child.wait()


def test_other_names_are_not_held_up(tmp_path):
    state = str(tmp_path)
    with locks.instance_lock(state, 'i-1'):
        assert taken_within(state, 'i-2', 5)[0]
        # an instance and a volume of the same id are two locks
        with locks.volume_lock(state, 'i-1'):
            pass


def test_a_process_holding_a_name_excludes_this_one_until_it_is_killed(tmp_path):
    state = str(tmp_path)
    held_until_killed(state, subprocess.Popen([sys.executable, '-c', HOLD, state, 'i-1'],
                                              stdout=subprocess.PIPE, text=True))


def test_names_leave_no_file_behind(tmp_path):
    state = str(tmp_path)
    for n in range(300):
        with locks.instance_lock(state, 'i-%d' % n), locks.volume_lock(state, 'v-%d' % n):
            pass
    assert os.listdir(locks.lock_path(state)) == [locks.NAMES]
    assert os.path.getsize(os.path.join(locks.lock_path(state), locks.NAMES)) == 0


def test_a_name_that_is_not_text_utf_8_can_encode_still_locks(tmp_path):
    state = str(tmp_path)
    with locks.instance_lock(state, 'i-\udcff'):
        assert not taken_within(state, 'i-\udcff', 0.3)[0]
        assert taken_within(state, 'i-\udcfe', 5)[0]


def test_a_holder_that_raises_lets_go(tmp_path):
    state = str(tmp_path)
    try:
        with locks.instance_lock(state, 'i-1'):
            raise ValueError('boom')
    except ValueError:
        pass
    assert taken_within(state, 'i-1', 5)[0]


def test_locks_the_filesystem_cannot_take_are_named_at_start_up(tmp_path, monkeypatch):
    locks.probe(str(tmp_path))   # here they can

    def refused(fd, cmd, arg):
        raise OSError(errno.EINVAL, 'Invalid argument')
    monkeypatch.setattr(locks.fcntl, 'fcntl', refused)
    with pytest.raises(exception.LocksUnavailable) as caught:
        locks.probe(str(tmp_path))
    assert locks.lock_path(str(tmp_path)) in str(caught.value)
    assert 'Invalid argument' in str(caught.value)

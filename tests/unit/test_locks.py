"""The host's named locks (attachworker.worker.locks): one name at a time across the
threads and processes of the host, a killed holder's lock freed, no file per name."""
import os
import subprocess
import sys
import threading

from attachworker.worker import locks

HOLD = '''
import sys, time
from attachworker.worker import locks
with locks.instance_lock(sys.argv[1], sys.argv[2]):
    print('held', flush=True)
    time.sleep(600)
'''


def taken_within(state_path, instance, timeout):
    """Does another thread get ``instance``'s lock within ``timeout`` seconds?"""
    got = threading.Event()

    def take():
        with locks.instance_lock(state_path, instance):
            got.set()
    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    return got.wait(timeout), thread


def test_one_thread_at_a_time_holds_a_name(tmp_path):
    state = str(tmp_path)
    with locks.instance_lock(state, 'i-1'):
        got, thread = taken_within(state, 'i-1', 0.3)
        assert not got                       # the second thread waits...
    thread.join(5)
    assert not thread.is_alive()             # ...and has it once the first lets go


def test_other_names_are_not_held_up(tmp_path):
    state = str(tmp_path)
    with locks.instance_lock(state, 'i-1'):
        assert taken_within(state, 'i-2', 5)[0]
        # an instance and a volume of the same id are two locks
        with locks.volume_lock(state, 'i-1'):
            pass


def test_a_process_holding_a_name_excludes_this_one_until_it_is_killed(tmp_path):
    state = str(tmp_path)
    holder = subprocess.Popen([sys.executable, '-c', HOLD, state, 'i-1'],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        got, thread = taken_within(state, 'i-1', 0.3)
        assert not got
        assert taken_within(state, 'i-2', 5)[0]
        holder.kill()                        # kill -9: the kernel lets go of it
        thread.join(10)
        assert not thread.is_alive()
    finally:
        holder.kill()
        holder.wait()


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

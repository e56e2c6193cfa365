"""The writer lock between processes: a waiter is woken when the holder lets go, never
waits past its timeout, and a request it gave up on never leaves the lock taken or
makes it believe it holds a lock it does not."""
import fcntl
import sqlite3
import threading
import time

import pytest

from attachworker.worker.writer_lock import WriterLock
from tests.harness import wait_for


@pytest.fixture
def lock_path(tmp_path):
    return str(tmp_path / 'db.writer')


class Peer:
    """Another process's hold on the lock (another open file description: flock
    conflicts between descriptions, also in one process)."""

    def __init__(self, path):
        self._file = open(path, 'a')

    def take(self):
        fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def let_go(self):
        fcntl.flock(self._file, fcntl.LOCK_UN)

    def can_take(self):
        try:
            self.take()
        except BlockingIOError:
            return False
        self.let_go()
        return True

    def close(self):
        self._file.close()


def served(lock):
    """The lock's thread has no request in hand, nor one waiting (what it had to
    let go of, it has)."""
    with lock._cond:
        return not lock._busy and lock._request is None


def gave_up_once(lock_path, timeout):
    """A lock that gave up waiting for a peer that still holds it: its thread has
    started, and still waits in the kernel for the abandoned request."""
    lock, peer = WriterLock(lock_path, timeout=timeout), Peer(lock_path)
    peer.take()
    with pytest.raises(sqlite3.OperationalError):
        lock.acquire()
    return lock, peer


def test_a_free_lock_is_taken_at_once_and_released(lock_path):
    lock, peer = WriterLock(lock_path), Peer(lock_path)
    lock.acquire()
    assert lock.held and not peer.can_take()
    lock.acquire()  # held: a no-op
    lock.release()
    assert not lock.held and peer.can_take()
    assert lock._thread is None  # no thread unless someone had to wait
    lock.close()


def test_a_waiter_is_woken_when_the_holder_lets_go(lock_path):
    lock, peer = WriterLock(lock_path, timeout=60), Peer(lock_path)
    peer.take()
    got = threading.Event()
    waiter = threading.Thread(target=lambda: (lock.acquire(), got.set()))
    waiter.start()
    assert not got.wait(0.3)  # still held by the peer
    peer.let_go()
    assert got.wait(10)
    waiter.join(10)
    assert lock.held and not peer.can_take()
    lock.release()
    assert peer.can_take()
    lock.close()


def test_a_holder_that_never_lets_go_costs_an_error_not_a_hang(lock_path):
    """A SIGSTOPped peer, a COMMIT stuck in fsync: the wait ends with SQLite's error."""
    lock, peer = WriterLock(lock_path, timeout=0.3), Peer(lock_path)
    peer.take()
    outcome = []

    def take():
        try:
            lock.acquire()
            outcome.append('held')
        except sqlite3.OperationalError as exc:
            outcome.append(str(exc))
    waiter = threading.Thread(target=take)
    waiter.start()
    waiter.join(20)
    assert not waiter.is_alive(), 'acquire never gave up'
    assert len(outcome) == 1 and 'database is locked' in outcome[0], outcome
    assert not lock.held
    # the lock's thread, still waiting in the kernel for the abandoned request, lets
    # go as soon as it gets the lock: the peer can take it again
    peer.let_go()
    assert wait_for(lambda: served(lock), 10)
    assert peer.can_take()
    lock.timeout = 30
    lock.acquire()
    assert lock.held and not peer.can_take()
    lock.close()
    assert peer.can_take()  # closing releases it


def test_a_request_given_up_never_passes_for_a_held_lock(lock_path):
    """The taker and the lock's thread share one description, on which a try of the
    taker would succeed on the thread's hold. Again and again: time out, let the peer
    go, take at once, while the thread may be taking and letting go."""
    lock, peer = WriterLock(lock_path), Peer(lock_path)
    for _ in range(30):
        peer.take()
        lock.timeout = 0.05
        with pytest.raises(sqlite3.OperationalError):
            lock.acquire()
        peer.let_go()
        lock.timeout = 30
        lock.acquire()  # through the thread while it is busy, else at once
        for _ in range(5):  # held for real, not just on the thread's say-so
            assert not peer.can_take()
            time.sleep(0.01)
        lock.release()
        assert wait_for(peer.can_take, 10)
    lock.close()


def test_a_closed_lock_refuses_and_its_thread_ends(lock_path):
    lock, peer = gave_up_once(lock_path, 0.1)
    lock.close()
    peer.let_go()
    lock._thread.join(10)
    assert not lock._thread.is_alive()
    assert wait_for(peer.can_take, 10)
    with pytest.raises(sqlite3.ProgrammingError):
        lock.acquire()


def test_an_exception_while_waiting_gives_the_request_up(lock_path, monkeypatch):
    """A signal handler's exception (KeyboardInterrupt) in the taker's wait: the
    thread must not take the lock for nobody and keep it."""
    lock, peer = WriterLock(lock_path, timeout=30), Peer(lock_path)
    peer.take()
    wait, taker = lock._cond.wait, threading.current_thread()

    def interrupted(timeout=None):
        if threading.current_thread() is not taker:  # the lock's thread waits as ever
            return wait(timeout)
        wait(0.05)
        raise KeyboardInterrupt
    monkeypatch.setattr(lock._cond, 'wait', interrupted)
    with pytest.raises(KeyboardInterrupt):
        lock.acquire()
    monkeypatch.setattr(lock._cond, 'wait', wait)
    assert not lock.held
    peer.let_go()
    assert wait_for(lambda: served(lock), 10)  # the thread got the lock, and then:
    assert peer.can_take()  # it let go, the request being abandoned
    lock.acquire()
    assert lock.held and not peer.can_take()
    lock.close()
    assert peer.can_take()


def test_a_thread_that_cannot_start_leaves_the_lock_usable(lock_path, monkeypatch):
    import os
    lock, peer = WriterLock(lock_path, timeout=30), Peer(lock_path)
    peer.take()
    dup, dups = os.dup, []

    def refuse(self):
        raise RuntimeError("can't start new thread")
    monkeypatch.setattr(threading.Thread, 'start', refuse)
    monkeypatch.setattr(os, 'dup', lambda fd: dups.append(dup(fd)) or dups[-1])
    with pytest.raises(RuntimeError):
        lock.acquire()
    monkeypatch.undo()
    assert len(dups) == 1
    with pytest.raises(OSError):  # the thread's descriptor is not left open
        os.fstat(dups[0])
    peer.let_go()
    lock.acquire()  # neither a request nor a busy flag was left behind
    assert lock.held and not peer.can_take()
    lock.close()
    assert peer.can_take()


def test_closing_a_held_lock_lets_go_at_once_though_its_thread_lives(lock_path):
    """The thread has its own descriptor of the description: closing the file alone
    would not release the lock."""
    lock, peer = gave_up_once(lock_path, 0.05)
    peer.let_go()
    assert wait_for(lambda: served(lock), 10)
    lock.timeout = 30
    lock.acquire()
    lock.close()
    assert peer.can_take()
    lock._thread.join(10)
    assert not lock._thread.is_alive()


def test_a_dead_thread_is_replaced(lock_path):
    lock, peer = gave_up_once(lock_path, 0.05)
    peer.let_go()
    assert wait_for(lambda: served(lock), 10)
    dead = lock._thread
    with lock._cond:  # as if it had died of an unexpected error
        lock._closed = True
        lock._cond.notify_all()
    dead.join(10)
    assert not dead.is_alive()
    lock._closed, lock.timeout = False, 30
    peer.take()

    def let_go_once_a_new_thread_waits():
        wait_for(lambda: lock._thread is not dead and not served(lock), 10)
        peer.let_go()
    threading.Thread(target=let_go_once_a_new_thread_waits).start()
    lock.acquire()  # served by a new thread, not left to time out
    assert lock.held and lock._thread is not dead
    lock.close()

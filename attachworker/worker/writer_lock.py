"""An flock between the processes of a host, taken with a bounded wait.

The processes of ``[worker] workers = N`` share the journal and the fake driver's
records; a batch of a group commit holds this lock from its BEGIN to its end, so that a
waiting process sleeps in the kernel and is woken as soon as the holder lets go.
(SQLite's own busy handler sleeps 1, 2, 5 ... 100 ms and seldom finds the lock free: a
busy holder takes it again within microseconds of each COMMIT; polling the flock with
short sleeps has the same flaw.)

flock(2) cannot time out, and a holder may never let go: a SIGSTOPped peer, a COMMIT
stuck in fsync. So the blocking call is made by a thread of this lock, and the taker
waits for that thread at most ``timeout`` seconds, then gets
``sqlite3.OperationalError``, as SQLite's busy timeout would have given it. Should the
thread get the lock after its taker gave up, it lets go at once.

The taker and the thread lock one open file description (flock belongs to the
description; the thread has its own descriptor of it, which only it closes (or the
taker, when the thread cannot start), so a descriptor number closed and reused
meanwhile is never locked by mistake). While the
thread has a request in hand, the taker never tries the lock itself: on that
description its try would succeed on the thread's lock.
"""
import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from typing import Optional

#: seconds a write waits for another process's batch: the flock's wait here, and
#: SQLite's busy timeout on every connection (attachworker.worker.group_commit)
BUSY_TIMEOUT = 30.0


class _Request:
    __slots__ = ('granted', 'abandoned', 'error')

    def __init__(self) -> None:
        self.granted = False
        self.abandoned = False
        self.error: Optional[BaseException] = None


class WriterLock:
    """Not re-entrant across threads: callers serialise acquire/release (GroupCommit
    does, under its connection lock); ``held`` says whether this process has it."""

    def __init__(self, path: str, timeout: float = BUSY_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self.held = False
        self._file = open(path, 'a')
        self._cond = threading.Condition()
        self._request: Optional[_Request] = None  # waiting for the thread
        self._busy = False                        # the thread has a request in hand
        self._closed = False
        self._thread: Optional[threading.Thread] = None

    def acquire(self) -> None:
        """Take it (a no-op if held); sqlite3.OperationalError after ``timeout``."""
        if self.held:
            return
        with self._cond:
            if self._closed:
                raise sqlite3.ProgrammingError('%s is closed' % self.path)
            if not self._busy and self._request is None:
                try:
                    fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pass
                else:
                    self.held = True
                    return
            self._start_thread()
            request = self._request = _Request()
            self._cond.notify_all()
            try:
                self._wait(request)
            except BaseException:  # the timeout, or a signal handler's exception
                request.abandoned = True
                if self._request is request:
                    self._request = None
                raise
            self.held = True

    def _wait(self, request: _Request) -> None:
        deadline = time.monotonic() + self.timeout
        while not request.granted:
            if request.error is not None:
                raise sqlite3.OperationalError(
                    'cannot lock %s: %s' % (self.path, request.error))
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed:
                raise sqlite3.OperationalError(
                    'database is locked: another process has held %s for more than '
                    '%g s' % (self.path, self.timeout))
            self._cond.wait(remaining)

    def release(self) -> None:
        if self.held:
            self.held = False
            fcntl.flock(self._file, fcntl.LOCK_UN)

    def _start_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            fd = os.dup(self._file.fileno())
            thread = threading.Thread(target=self._run, args=(fd,), daemon=True,
                                      name='writer-lock')
            try:
                thread.start()
            except BaseException:
                os.close(fd)
                raise
            self._thread = thread

    def _run(self, fd: int) -> None:
        try:
            while True:
                with self._cond:
                    while self._request is None and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                    request, self._request = self._request, None
                    self._busy = True
                self._serve(fd, request)
        finally:
            os.close(fd)

    def _serve(self, fd: int, request: _Request) -> None:
        error: Optional[BaseException] = None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # the wait, in the kernel
        except BaseException as exc:  # noqa: BLE001 - told to the taker, never lost
            error = exc
        with self._cond:
            self._busy = False
            if error is not None:
                request.error = error
            elif request.abandoned or self._closed:
                with contextlib.suppress(OSError):  # its taker gave up
                    fcntl.flock(fd, fcntl.LOCK_UN)
            else:
                request.granted = True
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self.held:  # the thread's descriptor keeps the description open
            with contextlib.suppress(OSError):
                fcntl.flock(self._file, fcntl.LOCK_UN)
        self.held = False
        self._file.close()

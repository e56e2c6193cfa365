"""Group commit: one SQLite connection shared by every thread of the worker, where each
write returns only once a COMMIT (an fsync, ``synchronous = FULL``) covers it, and
one COMMIT covers every write made while the previous one was on its way to disk.

With one COMMIT per write, 64 threads take turns at the disk and the journal caps the
worker at one fsync per step. Here a writer runs its statements at once inside the
open transaction (in a SAVEPOINT of its own, so that its failure undoes its writes
only), then waits; the commit thread commits what has gathered, and everyone whose
writes it held goes on. Nothing returns before it is on disk: the durability of each
write is unchanged, only fsyncs are shared.

A failed COMMIT is rolled back, and every write of that batch fails (JournalError in
the journal), as a COMMIT of its own would have.
"""
import contextlib
import sqlite3
import threading
from typing import Iterator

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

#: Failed batches remembered for their writers to read (a few are plenty).
_FAILURES_KEPT = 64


class GroupCommit:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        #: the connection: statements and the COMMIT run under it
        self.lock = threading.Lock()
        mutex = threading.Lock()
        self._cond = threading.Condition(mutex)  # writers: a batch is settled
        self._wake = threading.Condition(mutex)  # the commit thread: there is work
        self._open = False        # a transaction holds writes not yet committed
        self._batch = 0           # the open (or last) batch
        self._committed = 0       # batches up to this one are settled
        self._failed: dict = {}   # batch -> the error its COMMIT raised
        self._wanted = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name='journal-commit',
                                        daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def write(self, wait: bool = True) -> Iterator[sqlite3.Connection]:
        """Run the body's statements; return once they are committed (sqlite3.Error if
        the body or the COMMIT failed).

        ``wait=False``: return at once; the statements are in the open transaction,
        so they are on disk no later than those of the next write that waits (a
        record whose loss in a crash changes nothing recovery decides).
        """
        with self.lock:
            if self._closed:
                raise sqlite3.ProgrammingError('the journal is closed')
            if not self._open:
                self._db.execute('BEGIN IMMEDIATE')
                self._open = True
                self._batch += 1
            batch = self._batch
            self._db.execute('SAVEPOINT w')
            try:
                yield self._db
                self._db.execute('RELEASE w')
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute('ROLLBACK TO w')
                    self._db.execute('RELEASE w')
                self._want_commit()  # the transaction must not stay open
                raise
        self._want_commit()
        if not wait:
            return
        with self._cond:
            while self._committed < batch:
                self._cond.wait()
            error = self._failed.get(batch)
        if error is not None:
            raise error

    def _want_commit(self) -> None:
        with self._wake:
            if not self._wanted:
                self._wanted = True
                self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._wanted and not self._closed:
                    self._wake.wait()
                self._wanted = False
                closing = self._closed
            try:
                self._commit()
            except Exception:  # noqa: BLE001 - writers wait on this thread: never die
                LOG.exception('Journal commit thread: unexpected error')
            if closing:
                return

    def _commit(self) -> None:
        with self.lock:
            if not self._open:
                return
            batch, error = self._batch, None
            try:
                self._db.execute('COMMIT')
            except sqlite3.Error as exc:
                error = exc
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute('ROLLBACK')
            self._open = False
        with self._cond:
            if error is not None:
                self._failed[batch] = error
                while len(self._failed) > _FAILURES_KEPT:
                    del self._failed[min(self._failed)]
            self._committed = batch
            self._cond.notify_all()

    def close(self) -> None:
        """Commit what is pending, stop the commit thread; later writes fail."""
        with self.lock:
            self._closed = True  # no new writer from now on
        with self._wake:
            self._wake.notify()
        self._thread.join(30)
        self._commit()  # should the thread be gone or stuck: nobody waits forever

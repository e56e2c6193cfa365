"""Group commit: one SQLite connection shared by every thread of the worker, where each
write returns only once a COMMIT (an fsync, ``synchronous = FULL``) covers it, and
one COMMIT covers every write that queued up while the previous one was running.

With one COMMIT per write, 64 threads take turns at the disk and the journal caps the
worker at one fsync per write. Here a writer runs its statements at once inside the
open transaction (in a SAVEPOINT of its own, so that its failure undoes its writes
only), then waits for its batch to be settled; the commit thread commits what has
gathered, and everyone whose writes it held goes on. Nothing returns before it is on
disk: the durability of each write is unchanged, only fsyncs are shared. (The
COMMIT holds the connection: writers queue behind it and form the next batch.)

Failure is per batch, and each writer keeps its own batch: a failed COMMIT is rolled
back and every write of that batch fails, as a COMMIT of its own would have; a
statement error that makes SQLite roll the whole transaction back (SQLITE_FULL,
SQLITE_IOERR...) fails the batch at once, and the next write begins a new one.

A body that raises has its own statements undone and still waits for its batch (what it
decided may rest on other writers' uncommitted statements); it gets the batch's error
if the batch failed, else its own.

Between processes (``[worker] workers = N`` share one database), SQLite's write lock is
held from a batch's BEGIN to its COMMIT, and a busy process starts its next batch within
microseconds of a COMMIT; a process that waits for it sleeps in SQLite's busy handler
(1, 2, 5 ... 100 ms) and seldom finds the lock free: measured, each of two children
spent 12 s of a 19 s run waiting there. With ``writer_lock``, a batch first takes an
flock on that file (attachworker.worker.writer_lock: waiters sleep in the kernel and
are woken at once when it is released, kill -9 releases it, and each try waits at most
the busy timeout; the writers of a process queued behind a try wait in turn). It is let
go only once SQLite's transaction is closed.

Readers of this connection see writes not yet committed: what must only see
committed rows uses a connection of its own (DurableDB.reader, read_committed).
"""
import contextlib
import sqlite3
import threading
from typing import Any
from typing import Callable
from typing import Iterator
from typing import Optional

from oslo_log import log as logging

from attachworker.worker.writer_lock import BUSY_TIMEOUT
from attachworker.worker.writer_lock import WriterLock

LOG = logging.getLogger(__name__)


class _Batch:
    """Its writers wait on its own event: settling one wakes its writers only (one
    condition for every batch woke the writers of the next one too, at every COMMIT:
    a herd of dozens of threads, each taking the GIL to go back to sleep)."""
    __slots__ = ('settled', 'error')

    def __init__(self) -> None:
        self.settled = threading.Event()
        self.error: Optional[BaseException] = None


def _copy(error: BaseException) -> BaseException:
    """A fresh exception for each writer (one instance raised in many threads would
    have its traceback rewritten under them)."""
    try:
        return type(error)(*error.args)
    except Exception:  # noqa: BLE001 - an exception type with another signature
        return sqlite3.OperationalError(str(error))


class GroupCommit:
    def __init__(self, db: sqlite3.Connection, writer_lock: Optional[str] = None,
                 busy_timeout: float = BUSY_TIMEOUT) -> None:
        self._db = db
        #: an flock held from each batch's BEGIN to its end (every process of the host)
        self._writer = WriterLock(writer_lock, busy_timeout) if writer_lock else None
        #: the connection: statements and the COMMIT run under it
        self.lock = threading.Lock()
        self._wake = threading.Condition()  # the commit thread: there is work
        self._batch: Optional[_Batch] = None        # the open batch (lock held)
        self._wanted = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name='group-commit',
                                        daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def write(self, wait: bool = True,
              track: Optional[list] = None) -> Iterator[sqlite3.Connection]:
        """Run the body's statements; return once they are committed (sqlite3.Error if
        the body or the COMMIT failed).

        ``wait=False``: return at once; the statements are in the open transaction,
        so they are on disk no later than those of the next write that waits.
        ``track`` (a list): the write's batch is appended to it, for ``confirm``:
        whether it was committed is then known, not merely assumed.
        """
        with self.lock:
            if self._closed:
                raise sqlite3.ProgrammingError('the database is closed')
            self._check_open()
            if self._batch is None:
                if self._db.in_transaction:  # a failed COMMIT whose ROLLBACK failed too
                    self._db.execute('ROLLBACK')
                self._begin()
            batch = self._batch
            failure: Optional[Exception] = None
            try:
                self._db.execute('SAVEPOINT w')
                try:
                    yield self._db
                    self._db.execute('RELEASE w')
                except BaseException as exc:
                    self._undo_writer()
                    if not isinstance(exc, Exception):
                        raise
                    failure = exc
            finally:
                self._check_open()
                self._want_commit()  # the transaction must not stay open
        if not wait and failure is None:
            if track is not None:
                track.append(batch)
            return
        # a body that failed waits too: what it decided may rest on other writers'
        # statements of this batch, which it must not report before they are on disk
        batch.settled.wait()
        if batch.error is not None:
            raise _copy(batch.error) from failure
        if failure is not None:
            raise failure

    def _undo_writer(self) -> None:
        """Undo a failed body's statements, and nothing else of the batch: when that
        cannot be done, the whole transaction goes (its batch fails: _check_open)."""
        if not self._db.in_transaction:
            return
        try:
            self._db.execute('ROLLBACK TO w')
            self._db.execute('RELEASE w')
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute('ROLLBACK')

    @staticmethod
    def confirm(batches: list) -> None:
        """Return once the batches of writes made with ``wait=False`` (``track``) are
        settled; the error of the first that failed (a copy), if one did. A batch
        settles before any later one: after a write that waited, this never waits."""
        for batch in batches:
            batch.settled.wait()
            if batch.error is not None:
                raise _copy(batch.error)

    def sync(self) -> None:
        """Return once what was written before this call is settled."""
        with self.lock:
            batch = self._batch
        if batch is None:
            return
        self._want_commit()
        batch.settled.wait()

    def _begin(self) -> None:
        """Open a batch (lock held)."""
        if self._writer is not None:
            self._writer.acquire()  # a no-op when a failed ROLLBACK kept it
        try:
            self._db.execute('BEGIN IMMEDIATE')
        except BaseException:
            self._release_writer()
            raise
        self._batch = _Batch()

    def _release_writer(self) -> None:
        """Let the other processes in, unless SQLite's transaction is still open (a
        failed COMMIT whose ROLLBACK failed too: the next batch rolls it back first;
        another process would only wait inside the flock for SQLite's lock)."""
        if self._writer is not None and not self._db.in_transaction:
            self._writer.release()

    def _check_open(self) -> None:
        """SQLite rolled the open batch back by itself: it failed (lock held)."""
        if self._batch is not None and not self._db.in_transaction:
            self._release_writer()
            self._settle(self._batch, sqlite3.OperationalError(
                'the transaction was rolled back by SQLite'))
            self._batch = None

    def _want_commit(self) -> None:
        with self._wake:
            if not self._wanted:
                self._wanted = True
                self._wake.notify()

    def _settle(self, batch: _Batch, error: Optional[BaseException]) -> None:
        batch.error = error
        batch.settled.set()

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
            self._check_open()
            batch, self._batch = self._batch, None
            if batch is None:
                return
            error: Optional[BaseException] = None
            try:
                self._db.execute('COMMIT')
            except BaseException as exc:  # whatever it is, the batch is settled
                error = exc
                with contextlib.suppress(sqlite3.Error):
                    if self._db.in_transaction:
                        self._db.execute('ROLLBACK')
                if self._db.in_transaction:
                    LOG.error('A group commit cannot roll a failed COMMIT back (%s); its '
                              'writes may yet be committed by a later batch', exc)
                if not isinstance(exc, Exception):
                    raise
            finally:
                self._release_writer()
                self._settle(batch, error)

    def close(self) -> None:
        """Commit what is pending, stop the commit thread; later writes fail."""
        with self.lock:
            self._closed = True  # no new writer from now on
        with self._wake:
            self._wake.notify()
        self._thread.join(30)
        self._commit()  # should the thread be gone or stuck: nobody waits forever
        with self.lock:
            if self._db.in_transaction:  # a failed COMMIT whose ROLLBACK failed too
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute('ROLLBACK')
            if self._writer is not None:
                self._writer.close()


def connect(path: str, row_factory: Any = None) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, timeout=BUSY_TIMEOUT,
                         isolation_level=None)
    db.row_factory = row_factory
    return db


class DurableDB:
    """A SQLite database every write of which is on disk when it returns: WAL,
    ``synchronous = FULL``, a group commit shared by the threads (and a writer lock by
    the processes of the host), and a second connection that sees committed rows only
    (for what is acted on outside the process: an ack, a notification, a device).

    ``prepare(db)`` creates or upgrades the schema at open. Not under the writer
    lock: on a database that has its schema it writes nothing, so a peer stuck in a
    batch (SIGSTOPped, its disk hung) does not keep a process from opening it (to
    read, to recover); the first open waits in SQLite's busy handler if it must.
    """

    def __init__(self, path: str, prepare: Callable[[sqlite3.Connection], None],
                 row_factory: Any = None) -> None:
        self.path = path
        self.reader_lock = threading.Lock()
        self.db = connect(path, row_factory)
        try:
            self.db.execute('PRAGMA synchronous=FULL')  # per connection
            self.group = GroupCommit(self.db, writer_lock=path + '.writer')
        except BaseException:
            self.db.close()
            raise
        try:
            self.db.execute('PRAGMA journal_mode=WAL')  # kept in the file
            prepare(self.db)
            self.reader = connect(path, row_factory)
        except BaseException:
            self.close()
            raise

    def read_committed(self, sql: str, params: Any = ()) -> list:
        with self.reader_lock:
            return self.reader.execute(sql, params).fetchall()

    def close(self) -> None:
        self.group.close()
        with self.group.lock:
            self.db.close()
        reader = getattr(self, 'reader', None)
        if reader is not None:
            with self.reader_lock:
                reader.close()

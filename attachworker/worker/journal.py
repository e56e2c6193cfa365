"""The journal: a local durable record of every operation, step and undo.

An operation is written before its cast is acknowledged (attachworker.rpc defers
the ack until then), and each notification before it is published (the outbox).
Recovery decides by the undos alone (and by the commit): every periodic round, at
start-up and on demand, every operation whose owner is gone is finished or undone by
replaying its recorded stack (attachworker.worker.recovery).

When a record waits for its fsync, and the test-only crash hook: attachworker.worker.journal_steps.

Storage: SQLite in WAL mode with ``synchronous = FULL`` under ``state_path``: every
write a decision of recovery needs is on disk before the operation acts on it. It
holds ids, states, the connector (no secret in it), undo arguments and notification
payloads, all masked again on the way in; never tokens or connection_info.
"""
import contextlib
import os
import sqlite3
import time
from typing import Any
from typing import Iterator
from typing import Optional

from oslo_log import log as logging

from attachworker import exception
from attachworker.worker import locks
from attachworker.worker.group_commit import DurableDB
from attachworker.worker.journal_outbox import OutboxStore
from attachworker.worker.journal_queries import JournalQueries
from attachworker.worker.journal_schema import SCHEMA
from attachworker.worker.journal_schema import dumps
from attachworker.worker.journal_schema import upgrade
from attachworker.worker.journal_steps import StepRecords

LOG = logging.getLogger(__name__)

TERMINAL = ('completed', 'failed', 'undone', 'recovered', 'duplicate')


def _prepare(db: sqlite3.Connection) -> None:
    db.executescript(SCHEMA)
    upgrade(db)


class Journal(JournalQueries, OutboxStore, StepRecords):
    """Thread-safe; one per process. Its owner lock proves the process is alive."""

    def __init__(self, state_path: str, owner: Optional[str] = None) -> None:
        os.makedirs(state_path, exist_ok=True)
        self.state_path = state_path
        self.path = os.path.join(state_path, 'journal.sqlite')
        self.owner = owner or locks.process_identity()
        self._owner_lock = locks.OwnerLock(state_path, self.owner)
        try:
            self._store = DurableDB(self.path, _prepare, row_factory=sqlite3.Row)
        except BaseException:
            self._owner_lock.release()  # this process is not the journal's owner
            raise
        self._db = self._store.db
        self._group = self._store.group
        self._lock = self._group.lock  # the connection, for reads
        self._init_records()

    @contextlib.contextmanager
    def _transaction(self, wait: bool = True,
                     track: Optional[list] = None) -> Iterator[sqlite3.Connection]:
        """With ``wait``, every statement inside is on disk when the block exits (a
        group commit: one fsync for the writes of every thread); JournalError on
        failure. ``wait=False``: on disk with the next write that waits; ``track``
        gets its batch, to confirm (GroupCommit.write)."""
        try:
            with self._group.write(wait, track) as db:
                yield db
        except sqlite3.Error as exc:
            raise exception.JournalError(reason=str(exc)) from exc

    def _write(self, sql: str, *params: Any) -> Any:
        with self._transaction() as db:
            return db.execute(sql, params)

    def _read_committed(self, sql: str, *params: Any) -> list:
        try:
            return [dict(row) for row in self._store.read_committed(sql, params)]
        except sqlite3.Error as exc:
            raise exception.JournalError(reason=str(exc)) from exc

    def _read(self, sql: str, *params: Any) -> list:
        try:
            with self._lock:
                return [dict(row) for row in self._db.execute(sql, params).fetchall()]
        except sqlite3.Error as exc:
            raise exception.JournalError(reason=str(exc)) from exc

    # --- operations ----------------------------------------------------------------------
    def begin(self, op: Any, context: dict, unique_id: Optional[str] = None,
              entry: Optional[dict] = None, notification: Optional[dict] = None) -> bool:
        """Record a new operation (and its first undo, and its ``.start`` notification
        in the outbox: ``op.start_outbox`` is that row's id); False: ``unique_id`` is
        known, this delivery is a duplicate of a cast already journalled."""
        now = time.time()
        for attempt in (1, 2):
            try:
                with self._transaction() as db:
                    db.execute('INSERT INTO operations (op_id, request_id, unique_id, '
                               'action, state, owner, fields, context, created_at, '
                               'updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)',
                               (op.id, op.fields['request_id'], unique_id, op.action,
                                'running', self.owner, dumps(op.fields), dumps(context),
                                now, now))
                    if entry:
                        self._arm(db, op.id, entry)
                    op.start_outbox = self._queue(db, **notification) if notification \
                        else None
                break
            except exception.JournalError as exc:
                if not (unique_id and isinstance(exc.__cause__, sqlite3.IntegrityError)):
                    raise
                # the row it collides with may be another thread's, not yet committed
                self._group.sync()
                if self.known_cast(unique_id) or attempt == 2:
                    return False
        op.journalled_version = getattr(op, 'version', None)
        return True

    def known_cast(self, unique_id: str) -> bool:
        """Is this cast journalled (committed: a redelivery it answers is acked)?"""
        return bool(self._read_committed('SELECT 1 FROM operations WHERE unique_id=?',
                                         unique_id))

    def finish(self, op_id: str, state: str, fields: Optional[dict] = None,
               notification: Optional[dict] = None) -> Optional[int]:
        """Record the end state and queue its notification in one transaction.

        Either both are on disk or neither: a crash in between can neither lose the
        outcome notification nor send one for an operation still to be recovered.
        Returns the outbox id of the notification, if one was queued.
        """
        # what is still owed decides nothing once the end is on disk: the end is
        # terminal (recovery does not look at it again), and the commit waited
        self._unsynced.pop(op_id, None)
        with self._transaction() as db:
            self._flush_deferred(db, op_id)
            if fields is None:
                db.execute('UPDATE operations SET state=?, updated_at=? WHERE op_id=?',
                           (state, time.time(), op_id))
            else:
                db.execute('UPDATE operations SET state=?, fields=?, updated_at=? '
                           'WHERE op_id=?', (state, dumps(fields), time.time(), op_id))
            return self._queue(db, **notification) if notification else None

    def claim(self, op_id: str, previous_owner: str, state: str = 'running') -> bool:
        """Take over an orphan; False when another process took it first."""
        cursor = self._write('UPDATE operations SET owner=?, updated_at=? '
                             'WHERE op_id=? AND owner=? AND state=?', self.owner,
                             time.time(), op_id, previous_owner, state)
        return cursor.rowcount == 1

    def disown(self, op_id: str) -> None:
        """Give a claimed operation back: the next round (of any process) retries it."""
        self._write("UPDATE operations SET owner='nobody' WHERE op_id=? AND owner=?",
                    op_id, self.owner)

    def prune(self, older_than: float) -> None:
        """Forget finished operations and sent notifications older than that (epoch s)."""
        marks = ','.join('?' * len(TERMINAL))
        for table in ('steps', 'undos'):
            self._write('DELETE FROM %s WHERE op_id IN (SELECT op_id FROM operations '
                        'WHERE state IN (%s) AND updated_at < ?)' % (table, marks),
                        *TERMINAL, older_than)
        self._write('DELETE FROM operations WHERE state IN (%s) AND updated_at < ?' % marks,
                    *TERMINAL, older_than)
        self._write('DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ?',
                    older_than)

    def close(self) -> None:
        self._store.close()
        self._owner_lock.release()


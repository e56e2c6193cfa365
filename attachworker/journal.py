"""The journal: a local durable record of every operation and step.

oslo.messaging acknowledges a cast before dispatching it, so a worker that dies
mid-attach would lose it and leave the volume ``reserved`` or ``attaching``. The
journal closes that window: an operation is written as soon as the cast is
dispatched, each step before and after it runs, and each notification before it is
published (the outbox). At start-up, periodically, and on demand, every operation
whose owner process is gone is finished or undone (attachworker.recovery).

Storage: SQLite in WAL mode with ``synchronous = FULL`` under ``state_path``: every
write is on disk before the step it records runs. It holds ids, states, the
connector (no secret in it) and notification payloads (which never carry
secrets); never tokens or connection_info.

Test-only fault injection: with ``ATTACHWORKER_TEST_CRASH_AT=<step>:<started|done>``
in the environment, the process kills itself with SIGKILL right after journalling
that step state, as a power cut would.
"""
import contextlib
import json
import os
import signal
import sqlite3
import threading
import time
from typing import Any
from typing import Iterator
from typing import Optional

from oslo_log import log as logging

from attachworker import exception
from attachworker.operation import StepObserver

LOG = logging.getLogger(__name__)

CRASH_ENV = 'ATTACHWORKER_TEST_CRASH_AT'
#: Values kept from step results: what recovery needs, nothing secret.
_KEEP = ('attachment_id', 'mountpoint', 'flow', 'connector', 'driver_volume_type')

SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    op_id TEXT PRIMARY KEY,         -- ours: a controller may reuse a request id
    request_id TEXT,
    action TEXT NOT NULL,
    state TEXT NOT NULL,            -- running | completed | failed | undone | recovered
    owner TEXT NOT NULL,            -- pid:starttime of the process that runs it
    fields TEXT NOT NULL,           -- notification fields + connector, JSON
    context TEXT NOT NULL,          -- request/user/project ids, JSON (never a token)
    last_step TEXT,
    step_state TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS steps (
    op_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    step TEXT NOT NULL,
    state TEXT NOT NULL,            -- started | done
    at REAL NOT NULL,
    PRIMARY KEY (op_id, seq)
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT,
    action TEXT NOT NULL,
    phase TEXT NOT NULL,
    fields TEXT NOT NULL,
    fault TEXT,
    context TEXT NOT NULL,
    created_at REAL NOT NULL,
    sent_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (sent_at) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS operations_state ON operations (state);
CREATE INDEX IF NOT EXISTS operations_request ON operations (request_id);
"""

TERMINAL = ('completed', 'failed', 'undone', 'recovered')


def process_identity(pid: Optional[int] = None) -> str:
    """``pid:starttime``: unique across pid reuse."""
    pid = pid or os.getpid()
    try:
        with open('/proc/%d/stat' % pid) as f:
            start = f.read().rsplit(')', 1)[1].split()[19]
    except (OSError, IndexError):
        start = '0'
    return '%d:%s' % (pid, start)


def owner_alive(owner: str) -> bool:
    pid = int(owner.split(':', 1)[0])
    return process_identity(pid) == owner


class Journal(StepObserver):
    """Thread-safe; one per process."""

    def __init__(self, state_path: str, owner: Optional[str] = None) -> None:
        os.makedirs(state_path, exist_ok=True)
        self.path = os.path.join(state_path, 'journal.sqlite')
        self.owner = owner or process_identity()
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30,
                                   isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute('PRAGMA journal_mode=WAL')
        self._db.execute('PRAGMA synchronous=FULL')
        self._db.executescript(SCHEMA)
        self._crash_at = os.environ.get(CRASH_ENV)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One commit (one fsync) for every statement inside; JournalError on failure."""
        try:
            with self._lock:
                self._db.execute('BEGIN IMMEDIATE')
                try:
                    yield self._db
                except BaseException:
                    self._db.execute('ROLLBACK')
                    raise
                self._db.execute('COMMIT')
        except sqlite3.Error as exc:
            raise exception.JournalError(reason=str(exc)) from exc

    def _write(self, sql: str, *params: Any) -> Any:
        with self._transaction() as db:
            return db.execute(sql, params)

    def _read(self, sql: str, *params: Any) -> list:
        with self._lock:
            return [dict(row) for row in self._db.execute(sql, params).fetchall()]

    # --- operations ----------------------------------------------------------------------
    def begin(self, op: Any, context: dict) -> None:
        now = time.time()
        self._write('INSERT INTO operations (op_id, request_id, action, state, owner, '
                    'fields, context, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)',
                    op.id, op.fields['request_id'], op.action, 'running', self.owner,
                    json.dumps(op.fields), json.dumps(context), now, now)

    def finish(self, op_id: str, state: str, fields: Optional[dict] = None,
               notification: Optional[dict] = None) -> Optional[int]:
        """Record the end state and queue its notification in one transaction.

        Either both are on disk or neither: a crash in between can neither lose the
        outcome notification nor send one for an operation still to be recovered.
        Returns the outbox id of the notification, if one was queued.
        """
        with self._transaction() as db:
            if fields is None:
                db.execute('UPDATE operations SET state=?, updated_at=? WHERE op_id=?',
                           (state, time.time(), op_id))
            else:
                db.execute('UPDATE operations SET state=?, fields=?, updated_at=? '
                           'WHERE op_id=?', (state, json.dumps(fields), time.time(), op_id))
            return self._queue(**notification) if notification else None

    def _record(self, op: Any, step: str, state: str, result: Any = None) -> None:
        if state == 'done':
            self._remember(op, step, result)
        now = time.time()
        with self._transaction() as db:  # the step and the operation's summary together
            db.execute('INSERT INTO steps (op_id, seq, step, state, at) VALUES '
                       '(?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM steps WHERE op_id=?), '
                       '?, ?, ?)', (op.id, op.id, step, state, now))
            db.execute('UPDATE operations SET last_step=?, step_state=?, fields=?, '
                       'updated_at=? WHERE op_id=?',
                       (step, state, json.dumps(op.fields), now, op.id))
        if self._crash_at == '%s:%s' % (step, state):
            LOG.warning('%s=%s: killing this process now (test only)', CRASH_ENV,
                        self._crash_at)
            os.kill(os.getpid(), signal.SIGKILL)

    @staticmethod
    def _remember(op: Any, step: str, result: Any) -> None:
        if step == 'attachment_create' and isinstance(result, dict):
            op.fields['attachment_id'] = result.get('id')
        elif step == 'connector' and isinstance(result, dict):
            op.fields['connector'] = result
        elif step == 'reserve_device' and isinstance(result, str):
            op.fields['mountpoint'] = result

    def step_started(self, op: Any, step: str) -> None:
        self._record(op, step, 'started')

    def step_done(self, op: Any, step: str, result: Any = None) -> None:
        self._record(op, step, 'done', result)

    def steps(self, op_id: str) -> list:
        return self._read('SELECT step, state, at FROM steps WHERE op_id=? ORDER BY seq',
                          op_id)

    def get(self, key: str) -> Optional[dict]:
        """One operation, by our op id or by its request id (the newest one)."""
        rows = self._read('SELECT * FROM operations WHERE op_id=? OR request_id=? '
                          'ORDER BY created_at DESC LIMIT 1', key, key)
        return _decode(rows[0]) if rows else None

    def list(self, states: Optional[tuple] = None, limit: int = 100) -> list:
        if states:
            marks = ','.join('?' * len(states))
            rows = self._read('SELECT * FROM operations WHERE state IN (%s) '
                              'ORDER BY created_at DESC LIMIT ?' % marks, *states, limit)
        else:
            rows = self._read('SELECT * FROM operations ORDER BY created_at DESC LIMIT ?',
                              limit)
        return [_decode(r) for r in rows]

    def orphans(self) -> list:
        """Unfinished operations whose owner process is gone."""
        return [op for op in self.list(('running',), limit=100000)
                if not owner_alive(op['owner'])]

    def claim(self, op_id: str, previous_owner: str, state: str = 'running') -> bool:
        """Take over an orphan; False when another process took it first."""
        cursor = self._write('UPDATE operations SET owner=?, updated_at=? '
                             'WHERE op_id=? AND owner=? AND state=?', self.owner,
                             time.time(), op_id, previous_owner, state)
        return cursor.rowcount == 1

    # --- outbox ----------------------------------------------------------------------------
    def _queue(self, action: str, phase: str, fields: dict, fault: Optional[dict],
               context: dict) -> int:
        """INSERT into the outbox; the caller holds a transaction."""
        cursor = self._db.execute(
            'INSERT INTO outbox (request_id, action, phase, fields, fault, context, '
            'created_at) VALUES (?,?,?,?,?,?,?)',
            (fields.get('request_id'), action, phase, json.dumps(fields),
             json.dumps(fault) if fault else None, json.dumps(context), time.time()))
        return cursor.lastrowid

    def queue_notification(self, action: str, phase: str, fields: dict,
                           fault: Optional[dict], context: dict) -> int:
        with self._transaction():
            return self._queue(action, phase, fields, fault, context)

    def is_sent(self, outbox_id: int) -> bool:
        rows = self._read('SELECT sent_at FROM outbox WHERE id=?', outbox_id)
        return bool(rows and rows[0]['sent_at'])

    def mark_sent(self, outbox_id: int) -> None:
        self._write('UPDATE outbox SET sent_at=? WHERE id=?', time.time(), outbox_id)

    def unsent(self) -> Iterator[dict]:
        for row in self._read('SELECT * FROM outbox WHERE sent_at IS NULL ORDER BY id'):
            row['fields'] = json.loads(row['fields'])
            row['fault'] = json.loads(row['fault']) if row['fault'] else None
            row['context'] = json.loads(row['context'])
            yield row

    def prune(self, older_than: float) -> None:
        """Forget finished operations and sent notifications older than that (epoch s)."""
        marks = ','.join('?' * len(TERMINAL))
        self._write('DELETE FROM steps WHERE op_id IN (SELECT op_id FROM '
                    'operations WHERE state IN (%s) AND updated_at < ?)' % marks,
                    *TERMINAL, older_than)
        self._write('DELETE FROM operations WHERE state IN (%s) AND updated_at < ?' % marks,
                    *TERMINAL, older_than)
        self._write('DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ?',
                    older_than)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _decode(row: dict) -> dict:
    row['fields'] = json.loads(row['fields'])
    row['context'] = json.loads(row['context'])
    return row

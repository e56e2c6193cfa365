"""Writing to the audit store: one transaction per notification.

Two rules make concurrent consumers safe without any lookup-then-write race:

* an event row is inserted with ``ON CONFLICT (message_id) DO NOTHING``; the
  UNIQUE constraint, not a SELECT, decides that a message is a duplicate;
* the operation row is upserted with ``ON CONFLICT (request_id) DO UPDATE``,
  merging in SQL so that events of one operation give the same row whatever
  order they arrive in and whichever process stores them (see
  :data:`models.OUTCOME_RANK`): the earliest start, the worst outcome, and the
  fields of the end that outcome came with.

Both statements run in the transaction of the event's batch, so an operation row
never counts an event that is not stored. SQLite and PostgreSQL are supported: both speak this
upsert.

Errors are translated here, once. Only an outage (:func:`is_outage`: the database
cannot be reached, the connection is lost, it is locked, read-only or not set
up) is ``AuditStoreUnavailable``: the consumer holds the batch and stores it later.
Anything else raised while building or writing rows (a value the driver cannot
adapt or the database refuses, a bug) is about the rows, so it is
``AuditRecordRefused``: the consumer then finds the message refused and keeps it as
rejected. Requeueing those would wedge the queue on one poison message.
"""
import contextlib
import datetime
import os
import threading
from typing import Iterator
from typing import Optional

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite

from attachworker.audit import masking
from attachworker.audit import models
from attachworker.audit.contract import AuditEvent
from attachworker.exception import AuditBackendUnsupported
from attachworker.exception import AuditRecordRefused
from attachworker.exception import AuditStoreUnavailable

_INSERTS = {'sqlite': sqlite.insert, 'postgresql': postgresql.insert}
_DESCRIPTIVE = ('instance_uuid', 'volume_id', 'project_id', 'user_id', 'host',
                'attachment_id', 'mountpoint', 'mode', 'flow', 'driver_volume_type')
_TERMINAL = ('outcome', 'ended_at', 'duration_ms', 'fault_exception', 'fault_message',
             'fault_step', 'fault_code')


def default_url(state_path: str) -> str:
    return 'sqlite:///' + os.path.join(os.path.abspath(state_path), 'audit.sqlite')


def _short(exc: Exception) -> str:
    cause = getattr(exc, 'orig', None) or exc
    text = str(cause).strip().splitlines()
    if not isinstance(exc, sa_exc.DBAPIError):  # not the database's words: say what
        text = ['%s: %s' % (type(cause).__name__, text[0] if text else '')]
    return text[0][:300] if text else type(exc).__name__


#: Raised whatever the rows: the database is away, busy or out of resources.
_OUTAGES = (sa_exc.OperationalError, sa_exc.TimeoutError, sa_exc.DisconnectionError)
#: PostgreSQL SQLSTATEs (and classes) that are about the database, never the row:
#: deadlock or serialization (40), a read-only standby after a failover (25006),
#: no such database, schema or table, a revoked privilege. Connection (08),
#: resources (53), shutdown (57) and system (58) errors are OperationalErrors.
_PG_OUTAGE = ('40', '25006', '3D000', '3F000', '42P01', '42501')
#: SQLite result codes that are not OperationalErrors but about the file.
_SQLITE_OUTAGE = ('SQLITE_CORRUPT', 'SQLITE_NOTADB')


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be used now, whatever the rows."""
    if isinstance(exc, _OUTAGES) or getattr(exc, 'connection_invalidated', False):
        return True
    orig = getattr(exc, 'orig', None)
    code = getattr(orig, 'pgcode', None) or ''
    return (code.startswith(_PG_OUTAGE)
            or getattr(orig, 'sqlite_errorname', None) in _SQLITE_OUTAGE)


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Any error -> AuditStoreUnavailable (an outage) or AuditRecordRefused."""
    try:
        yield
    except Exception as exc:
        if is_outage(exc):
            raise AuditStoreUnavailable(reason=_short(exc)) from exc
        raise AuditRecordRefused(reason=_short(exc)) from exc


def create_engine(url: str, busy_timeout: float = 10.0) -> sa.engine.Engine:
    """An engine for ``url``; SQLite files get WAL and a busy timeout."""
    parsed = sa.engine.make_url(url)
    backend = parsed.get_backend_name()
    if backend not in _INSERTS:
        raise AuditBackendUnsupported(dialect=backend, supported=', '.join(_INSERTS))
    if backend == 'postgresql':
        return sa.create_engine(parsed, pool_pre_ping=True, pool_size=10,
                                max_overflow=10, pool_timeout=10,
                                connect_args={'connect_timeout': 5})
    if parsed.database and parsed.database != ':memory:':
        os.makedirs(os.path.dirname(os.path.abspath(parsed.database)), exist_ok=True)
    engine = sa.create_engine(parsed, connect_args={'timeout': busy_timeout,
                                                    'check_same_thread': False})

    @sa.event.listens_for(engine, 'connect')
    def _pragmas(dbapi_connection, _record):
        # WAL lets readers (the query commands) run beside a writer and two serve
        # processes share the file; NORMAL sync is durable across process crashes.
        cursor = dbapi_connection.cursor()
        cursor.execute('PRAGMA busy_timeout = %d' % int(busy_timeout * 1000))
        cursor.execute('PRAGMA journal_mode = WAL')
        cursor.execute('PRAGMA synchronous = NORMAL')
        cursor.close()

    return engine


def _operation_row(event: AuditEvent) -> dict:
    """The operation row as this event alone would make it."""
    terminal = event.outcome not in models.NOT_TERMINAL
    row = {key: getattr(event, key) for key in _DESCRIPTIVE + _TERMINAL[2:]}
    if not terminal:
        row.update(dict.fromkeys(_TERMINAL[2:]))
    row.update(request_id=event.request_id, action=event.action,
               outcome=event.outcome if terminal else 'pending',
               events_count=1, updated_at=event.received_at,
               started_at=None if terminal else event.timestamp,
               ended_at=event.timestamp if terminal else None)
    return row


class Store:
    """The audit store's write side. Thread-safe; one per process."""

    def __init__(self, engine: sa.engine.Engine) -> None:
        self.engine = engine
        self._insert = _INSERTS[engine.dialect.name]
        # SQLite has one writer at a time anyway: queueing our own threads here
        # leaves its busy handler (which sleeps in steps up to 100 ms) to settle
        # only the contention between processes.
        self._write_lock = (threading.Lock() if engine.dialect.name == 'sqlite'
                            else contextlib.nullcontext())
        # Built once: building and caching these per message cost more than the
        # database round trips.
        events = models.events
        self._insert_events = self._insert(events).on_conflict_do_nothing(
            index_elements=['message_id']).returning(events.c.message_id)
        self._merge = self._merge_operations()
        self._insert_rejected = self._insert(models.rejected)
        self._insert_rejected_once = self._insert_rejected.on_conflict_do_nothing(
            index_elements=['message_id'])

    def record_event(self, event: AuditEvent) -> bool:
        """Store one event and merge it into its operation; False if a duplicate."""
        return self.record_events([event])[0]

    def record_events(self, events: list) -> list:
        """Store events in one transaction; for each, False if it was a duplicate.

        A few statements per batch, whatever its size: one multi-row insert of the
        events, then one multi-row upsert of their operations per "wave" (a
        request with three events in the batch needs three waves). Locks are
        taken in one global order, events by message id and then operations by
        request id, so concurrent batches (PostgreSQL) wait instead of deadlocking.
        """
        with translate_errors():
            first = {}
            for index, event in enumerate(events):
                first.setdefault(event.message_id, index)
            rows = [events[i].row() for i in sorted(first.values(),
                                                    key=lambda i: events[i].message_id)]
        with self._write_lock, translate_errors(), self.engine.begin() as conn:
            inserted = set(conn.execute(self._insert_events, rows).scalars())
            stored = [event.message_id in inserted and first[event.message_id] == index
                      for index, event in enumerate(events)]
            for wave in _waves([e for e, new in zip(events, stored, strict=True) if new]):
                conn.execute(self._merge, wave)
        return stored

    def record_rejected(self, *, reason: str, size: int, excerpt: str,
                        received_at: datetime.datetime, message_id: Optional[str] = None,
                        event_type: Optional[str] = None,
                        publisher_id: Optional[str] = None) -> bool:
        """Keep a message that will never be stored as an event; False if known.

        Its texts come from a message that broke the contract: each is masked and
        made storable here (:func:`masking.mask_row`), then cut to its column.
        ``excerpt`` comes masked by whoever cut it (structured data is masked
        before it becomes JSON, and masking that text again could cut it): it is
        only made storable.
        """
        with translate_errors():
            row = _fit(models.rejected, masking.mask_row(dict(
                message_id=message_id, reason=reason, event_type=event_type,
                publisher_id=publisher_id, excerpt=excerpt), masked=('excerpt',)))
            row.update(size=size, received_at=received_at)
        insert = (self._insert_rejected if row['message_id'] is None
                  else self._insert_rejected_once)
        with self._write_lock, translate_errors(), self.engine.begin() as conn:
            return conn.execute(insert, row).rowcount != 0

    def _merge_operations(self):
        """The operation upsert; the new row is what one event alone would make."""
        ops = models.operations
        upsert = self._insert(ops)
        new = upsert.excluded
        old_rank = sa.case(models.OUTCOME_RANK, value=ops.c.outcome, else_=0)
        new_rank = sa.case(models.OUTCOME_RANK, value=new.outcome, else_=0)
        # The winning end: the worse outcome, then the earlier end. A start never wins.
        wins = sa.and_(new_rank > 0, sa.or_(
            old_rank < new_rank,
            sa.and_(old_rank == new_rank, sa.or_(ops.c.ended_at.is_(None),
                                                 ops.c.ended_at > new.ended_at))))
        earlier_start = sa.and_(new.started_at.is_not(None),
                                sa.or_(ops.c.started_at.is_(None),
                                       ops.c.started_at > new.started_at))
        merged = {key: sa.func.coalesce(ops.c[key], new[key]) for key in _DESCRIPTIVE}
        merged.update({key: sa.case((wins, new[key]), else_=ops.c[key])
                       for key in _TERMINAL})
        merged.update(started_at=sa.case((earlier_start, new.started_at),
                                         else_=ops.c.started_at),
                      events_count=ops.c.events_count + 1, updated_at=new.updated_at)
        # RETURNING makes SQLAlchemy send a wave as one multi-row statement
        # ("insertmanyvalues") rather than psycopg2's row-at-a-time executemany.
        return upsert.on_conflict_do_update(index_elements=['request_id'], set_=merged
                                            ).returning(ops.c.request_id)

    def dispose(self) -> None:
        self.engine.dispose()


def _fit(table: sa.Table, row: dict) -> dict:
    """Texts cut to their column's length (PostgreSQL refuses longer ones)."""
    for key, value in row.items():
        length = getattr(table.c[key].type, 'length', None)
        if isinstance(value, str) and length and len(value) > length:
            row[key] = value[:length]
    return row


def _waves(events: list) -> Iterator[list]:
    """Operation rows in statements that touch each request once, by request id."""
    by_request: dict = {}
    for event in events:
        by_request.setdefault(event.request_id, []).append(event)
    for depth in range(max((len(e) for e in by_request.values()), default=0)):
        yield [_operation_row(by_request[rid][depth]) for rid in sorted(by_request)
               if len(by_request[rid]) > depth]

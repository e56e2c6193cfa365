"""The journal's outbox table: notifications durable before they are published.

Each row keeps the event id its notification is published under (its
``message_id``), so a resend after a crash is the same notification and the audit
store de-duplicates it. A row that fails to publish for a reason of its own (not a
broker outage) is retried a few times, then *parked*: it stays visible in
``attachworker-manage journal list`` and no longer holds back the rows after it.
"""
import json
import time
from typing import Any
from typing import Iterator
from typing import Optional
import uuid

from oslo_utils import strutils

from attachworker.worker.journal_schema import dumps

#: Failed publications of one row before it is parked.
MAX_ATTEMPTS = 3
_OUTCOME_NAMESPACE = uuid.UUID('5b1c6f2e-8a47-4c1e-9a3d-6f0e2b7c9d41')


def outcome_event_id(op_id: str) -> str:
    """The event id of an operation's terminal notification, whoever sends it (the
    pipeline, a direct publish while the journal fails, recovery): a second copy is
    the same event, and the audit store keeps one."""
    return str(uuid.uuid5(_OUTCOME_NAMESPACE, op_id))


def _text(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None


class OutboxStore:
    """Mixed into Journal: uses its ``_transaction``/``_read``/``_write``."""

    def _queue(self, db: Any, action: str, phase: str, fields: dict,
               fault: Optional[dict], context: dict, event_id: Optional[str] = None,
               sent: bool = False) -> int:
        """INSERT into the outbox; the caller holds a transaction. ``sent``: it was
        published already (directly, while the journal could not be written)."""
        now = time.time()
        cursor = db.execute(
            'INSERT INTO outbox (event_id, request_id, action, phase, fields, fault, '
            'context, created_at, sent_at) VALUES (?,?,?,?,?,?,?,?,?)',
            (event_id or str(uuid.uuid4()), _text(fields.get('request_id')), action,
             phase, dumps(fields), dumps(fault) if fault else None, dumps(context),
             now, now if sent else None))
        return cursor.lastrowid

    def queue_notification(self, action: str, phase: str, fields: dict,
                           fault: Optional[dict], context: dict) -> int:
        with self._transaction() as db:
            return self._queue(db, action, phase, fields, fault, context)

    def outbox_row(self, outbox_id: int) -> Optional[dict]:
        rows = self._read('SELECT * FROM outbox WHERE id=?', outbox_id)
        return _decode(rows[0]) if rows else None

    def outbox_state(self, outbox_id: int) -> Optional[tuple]:
        """(event_id, created_at, sent_at) of a row, None if there is none."""
        rows = self._read('SELECT event_id, created_at, sent_at FROM outbox WHERE id=?',
                          outbox_id)
        return (rows[0]['event_id'], rows[0]['created_at'], rows[0]['sent_at']) \
            if rows else None

    def mark_sent(self, outbox_id: int) -> None:
        """Not waited for: lost in a crash, the row is published again under the same
        event id, and the audit store keeps one."""
        with self._transaction(wait=False) as db:
            db.execute('UPDATE outbox SET sent_at=? WHERE id=?', (time.time(), outbox_id))

    def mark_failed(self, outbox_id: int, error: str) -> bool:
        """Count a failed publication; True when the row is now parked."""
        with self._transaction() as db:
            db.execute('UPDATE outbox SET attempts=attempts+1, last_error=?, '
                       'parked_at=CASE WHEN attempts+1 >= ? THEN ? ELSE NULL END '
                       'WHERE id=?', (strutils.mask_password(error)[:500], MAX_ATTEMPTS,
                                      time.time(), outbox_id))
            row = db.execute('SELECT parked_at FROM outbox WHERE id=?',
                             (outbox_id,)).fetchone()
        return bool(row and row[0])

    def unsent(self) -> Iterator[dict]:
        # committed rows only (another thread's row may yet be rolled back), once
        # what was written before (a mark_sent not waited for) is settled
        self._group.sync()
        for row in self._read_committed('SELECT * FROM outbox WHERE sent_at IS NULL AND '
                                        'parked_at IS NULL ORDER BY id'):
            yield _decode(row)

    def outbox_counts(self) -> tuple:
        """(notifications waiting to be published, parked ones)."""
        rows = self._read('SELECT parked_at IS NOT NULL AS parked, COUNT(*) AS n FROM outbox '
                          'WHERE sent_at IS NULL GROUP BY parked_at IS NOT NULL')
        counts = {bool(row['parked']): row['n'] for row in rows}
        return counts.get(False, 0), counts.get(True, 0)

    def parked(self) -> list:
        return [_decode(r) for r in self._read(
            'SELECT * FROM outbox WHERE sent_at IS NULL AND parked_at IS NOT NULL ORDER BY id')]


def _decode(row: dict) -> dict:
    row['fields'] = json.loads(row['fields'])
    row['fault'] = json.loads(row['fault']) if row['fault'] else None
    row['context'] = json.loads(row['context'])
    return row

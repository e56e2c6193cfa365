"""The journal's tables, and the upgrade of a journal an older release wrote.

``operations``: one row per cast (``unique_id`` is oslo.messaging's message id:
a redelivered cast finds its row and is not run twice). ``steps``: the trail.
``undos``: each operation's stack, one row per entry, written with its step's
start (attachworker.worker.operation). ``outbox``: notifications, durable before they
are published, each with the event id it is published under every time.
"""
import json
import sqlite3
from typing import Any

from oslo_utils import strutils

SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    op_id TEXT PRIMARY KEY,         -- ours: a controller may reuse a request id
    request_id TEXT,
    unique_id TEXT,                 -- oslo.messaging's _unique_id of the cast
    action TEXT NOT NULL,
    state TEXT NOT NULL,            -- running | completed | failed | undone | recovered
                                    -- | undo_failed | duplicate
    owner TEXT NOT NULL,            -- pid:starttime of the process that runs it
    fields TEXT NOT NULL,           -- notification fields + connector, JSON
    context TEXT NOT NULL,          -- request/user/project ids, JSON (never a token)
    last_step TEXT,
    step_state TEXT,
    committed INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS steps (
    op_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    step TEXT NOT NULL,
    state TEXT NOT NULL,            -- started | done | failed | undo_done | undo_failed
    at REAL NOT NULL,
    PRIMARY KEY (op_id, seq)
);
CREATE TABLE IF NOT EXISTS undos (
    op_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    step TEXT NOT NULL,             -- the step it belongs to
    name TEXT NOT NULL,             -- attachworker.worker.undo.Compensator.do_<name>
    kind TEXT NOT NULL,             -- undo | finish
    args TEXT NOT NULL,             -- JSON keyword arguments, never a secret
    state TEXT NOT NULL,            -- armed | dropped | committed | done | failed
    PRIMARY KEY (op_id, seq)
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT,                  -- the notification's message_id, on every resend
    request_id TEXT,
    action TEXT NOT NULL,
    phase TEXT NOT NULL,
    fields TEXT NOT NULL,
    fault TEXT,
    context TEXT NOT NULL,
    created_at REAL NOT NULL,
    sent_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    parked_at REAL,                 -- given up on after repeated failures
    last_error TEXT
);
-- an operation's summary follows its trail, inside SQLite (no statement of its own);
-- an undo's row (undo_done, undo_failed) leaves it at the step the operation stopped at
CREATE TRIGGER IF NOT EXISTS steps_summary AFTER INSERT ON steps
WHEN NEW.state IN ('started', 'done', 'failed') BEGIN
    UPDATE operations SET last_step = NEW.step, step_state = NEW.state,
                          updated_at = NEW.at WHERE op_id = NEW.op_id;
END;
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (sent_at) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS operations_state ON operations (state);
CREATE INDEX IF NOT EXISTS operations_request ON operations (request_id);
"""

#: Columns added after the first release: (table, column, definition).
ADDED = [
    ('operations', 'unique_id', 'TEXT'),
    ('operations', 'committed', 'INTEGER NOT NULL DEFAULT 0'),
    ('outbox', 'event_id', 'TEXT'),
    ('outbox', 'attempts', 'INTEGER NOT NULL DEFAULT 0'),
    ('outbox', 'parked_at', 'REAL'),
    ('outbox', 'last_error', 'TEXT'),
]


def upgrade(db: sqlite3.Connection) -> None:
    for table, column, definition in ADDED:
        have = {row[1] for row in db.execute('PRAGMA table_info(%s)' % table)}
        if column not in have:
            db.execute('ALTER TABLE %s ADD COLUMN %s %s' % (table, column, definition))
    db.execute('CREATE UNIQUE INDEX IF NOT EXISTS operations_unique ON operations '
               '(unique_id) WHERE unique_id IS NOT NULL')


#: What oslo.utils masks: a text none of these occur in (lower-cased) has no secret
#: it would mask (None: this oslo.utils does not say; always mask).
_SECRET_KEYS = tuple(getattr(strutils, '_SANITIZE_KEYS', ())) or None


def dumps(value: Any) -> str:
    """A value as the journal stores it: JSON, secrets masked (text that cannot be
    encoded is escaped by json).

    The same as masking every key and string of ``value`` with oslo.utils, at a
    fraction of the cost: masking changes a value only where one of oslo.utils's
    keys occurs in it, and every key and string of ``value`` is in its JSON text
    verbatim when that text is pure ASCII (no ``\\u`` escape). So the JSON text is
    searched once, and only a value where a key occurs (or any non-ASCII) is masked.
    Only for values JSON knows as they are: anything else (a set, bytes, a Mapping
    that is not a dict) oslo.utils walks differently, so it takes the slow path.
    """
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = None
    if text is not None and _SECRET_KEYS is not None and '\\u' not in text:
        lowered = text.lower()
        if not any(key in lowered for key in _SECRET_KEYS):
            return text
    if isinstance(value, dict):
        value = strutils.mask_dict_password(value)
    elif isinstance(value, str):
        value = strutils.mask_password(value)
    return json.dumps(value, default=str)

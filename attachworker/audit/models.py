"""The audit store's tables (SQLAlchemy Core).

The schema is created and changed only by the alembic migrations in
``migrations/versions``; these definitions are what the code reads and writes,
and ``tests/unit/audit/test_migration.py`` checks the two agree.

Times are naive UTC datetimes. Payloads and contexts are stored as masked JSON
text (portable across SQLite and PostgreSQL, and no NUL-in-jsonb surprises).
"""
import sqlalchemy as sa

NAMING_CONVENTION = {
    'ix': 'ix_%(table_name)s_%(column_0_name)s',
    'uq': 'uq_%(table_name)s_%(column_0_name)s',
    'pk': 'pk_%(table_name)s',
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

ID = 255  # request ids, UUIDs, host names, exception class names


def _volume_columns() -> list:
    """Who and where: the same columns on events and operations."""
    return [
        sa.Column('instance_uuid', sa.String(ID)),
        sa.Column('volume_id', sa.String(ID)),
        sa.Column('project_id', sa.String(ID)),
        sa.Column('user_id', sa.String(ID)),
        sa.Column('host', sa.String(ID)),
        sa.Column('attachment_id', sa.String(ID)),
        sa.Column('mountpoint', sa.String(ID)),
        sa.Column('mode', sa.String(ID)),
        sa.Column('flow', sa.String(ID)),
        sa.Column('driver_volume_type', sa.String(ID)),
    ]


def _fault_columns() -> list:
    return [
        sa.Column('duration_ms', sa.BigInteger),
        sa.Column('fault_exception', sa.String(ID)),
        sa.Column('fault_message', sa.Text),
        sa.Column('fault_step', sa.String(ID)),
        sa.Column('fault_code', sa.Integer),
    ]


#: One row per notification. ``message_id`` is UNIQUE: the duplicate check.
events = sa.Table(
    'events', metadata,
    sa.Column('id', sa.Integer, primary_key=True, autoincrement=True),
    sa.Column('message_id', sa.String(ID), nullable=False, unique=True),
    sa.Column('request_id', sa.String(ID), nullable=False, index=True),
    sa.Column('global_request_id', sa.String(ID)),
    sa.Column('event_type', sa.String(ID), nullable=False),
    sa.Column('action', sa.String(16), nullable=False),
    sa.Column('outcome', sa.String(16), nullable=False),
    sa.Column('priority', sa.String(16), nullable=False),
    sa.Column('publisher_id', sa.String(ID)),
    sa.Column('payload_name', sa.String(ID), nullable=False),
    sa.Column('payload_version', sa.String(16), nullable=False),
    *_volume_columns(),
    *_fault_columns(),
    sa.Column('timestamp', sa.DateTime, nullable=False),
    sa.Column('received_at', sa.DateTime, nullable=False),
    sa.Column('payload', sa.Text, nullable=False),
    sa.Column('context', sa.Text),
)

#: One row per operation (request id): its .start joined with its .end/.error.
operations = sa.Table(
    'operations', metadata,
    sa.Column('request_id', sa.String(ID), primary_key=True),
    sa.Column('action', sa.String(16), nullable=False),
    sa.Column('outcome', sa.String(16), nullable=False, index=True),
    sa.Column('started_at', sa.DateTime, index=True),
    sa.Column('ended_at', sa.DateTime),
    *_volume_columns(),
    *_fault_columns(),
    sa.Column('events_count', sa.Integer, nullable=False),
    sa.Column('updated_at', sa.DateTime, nullable=False),
    sa.Index(None, 'volume_id'),
    sa.Index(None, 'instance_uuid'),
    sa.Index(None, 'host'),
    sa.Index(None, 'project_id'),
)

#: Messages that were malformed or not ours, kept (masked, truncated) with why.
rejected = sa.Table(
    'rejected', metadata,
    sa.Column('id', sa.Integer, primary_key=True, autoincrement=True),
    sa.Column('message_id', sa.String(ID), unique=True),
    sa.Column('reason', sa.String(1024), nullable=False),
    sa.Column('event_type', sa.String(ID)),
    sa.Column('publisher_id', sa.String(ID)),
    sa.Column('size', sa.Integer, nullable=False),
    sa.Column('excerpt', sa.Text, nullable=False),
    sa.Column('received_at', sa.DateTime, nullable=False, index=True),
)

#: Outcomes, in the order one replaces another when events of an operation meet:
#: an error is never overwritten by a success, a success never by a pending start.
OUTCOME_RANK = {'pending': 0, 'cleanup': 0, 'success': 1, 'error': 2}
#: Events that do not end their operation (its outcome comes from .end/.error).
NOT_TERMINAL = ('pending', 'cleanup')
#: What an operation's outcome can be.
OPERATION_OUTCOMES = ('pending', 'success', 'error')

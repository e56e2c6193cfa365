"""Initial audit schema: events, operations, rejected.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""
from alembic import op
import sqlalchemy as sa

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None

ID = 255


def _volume_columns() -> list:
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
        sa.Column('duration_ms', sa.BigInteger),
        sa.Column('fault_exception', sa.String(ID)),
        sa.Column('fault_message', sa.Text),
        sa.Column('fault_step', sa.String(ID)),
        sa.Column('fault_code', sa.Integer),
    ]


def upgrade() -> None:
    op.create_table(
        'events',
        sa.Column('id', sa.Integer, nullable=False, autoincrement=True),
        sa.Column('message_id', sa.String(ID), nullable=False),
        sa.Column('request_id', sa.String(ID), nullable=False),
        sa.Column('global_request_id', sa.String(ID)),
        sa.Column('event_type', sa.String(ID), nullable=False),
        sa.Column('action', sa.String(16), nullable=False),
        sa.Column('outcome', sa.String(16), nullable=False),
        sa.Column('priority', sa.String(16), nullable=False),
        sa.Column('publisher_id', sa.String(ID)),
        sa.Column('payload_name', sa.String(ID), nullable=False),
        sa.Column('payload_version', sa.String(16), nullable=False),
        *_volume_columns(),
        sa.Column('timestamp', sa.DateTime, nullable=False),
        sa.Column('received_at', sa.DateTime, nullable=False),
        sa.Column('payload', sa.Text, nullable=False),
        sa.Column('context', sa.Text),
        sa.PrimaryKeyConstraint('id', name='pk_events'),
        sa.UniqueConstraint('message_id', name='uq_events_message_id'),
    )
    op.create_index('ix_events_request_id', 'events', ['request_id'])

    op.create_table(
        'operations',
        sa.Column('request_id', sa.String(ID), nullable=False),
        sa.Column('action', sa.String(16), nullable=False),
        sa.Column('outcome', sa.String(16), nullable=False),
        sa.Column('started_at', sa.DateTime),
        sa.Column('ended_at', sa.DateTime),
        *_volume_columns(),
        sa.Column('events_count', sa.Integer, nullable=False),
        sa.Column('updated_at', sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint('request_id', name='pk_operations'),
    )
    for column in ('outcome', 'started_at', 'volume_id', 'instance_uuid', 'host',
                   'project_id'):
        op.create_index(f'ix_operations_{column}', 'operations', [column])

    op.create_table(
        'rejected',
        sa.Column('id', sa.Integer, nullable=False, autoincrement=True),
        sa.Column('message_id', sa.String(ID)),
        sa.Column('reason', sa.String(1024), nullable=False),
        sa.Column('event_type', sa.String(ID)),
        sa.Column('publisher_id', sa.String(ID)),
        sa.Column('size', sa.Integer, nullable=False),
        sa.Column('excerpt', sa.Text, nullable=False),
        sa.Column('received_at', sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint('id', name='pk_rejected'),
        sa.UniqueConstraint('message_id', name='uq_rejected_message_id'),
    )
    op.create_index('ix_rejected_received_at', 'rejected', ['received_at'])

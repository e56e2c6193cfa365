"""Audit unit fixtures: a migrated SQLite store in tmp_path, an endpoint on it."""
import sqlite3

import pytest

from attachworker.audit import backoff
from attachworker.audit import consumer
from attachworker.audit import migration
from attachworker.audit import store


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / 'audit.sqlite'


@pytest.fixture
def engine(db_path):
    engine = store.create_engine('sqlite:///%s' % db_path, busy_timeout=0.2)
    migration.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def audit_store(engine):
    return store.Store(engine)


@pytest.fixture
def endpoint(audit_store):
    return consumer.AuditEndpoint(audit_store, max_message_size=64 * 1024,
                                  excerpt_length=4096,
                                  backoff=backoff.Backoff(0.05, 0.2))


@pytest.fixture
def lock_database(db_path):
    """Hold SQLite's write lock from another connection, as another process would."""
    held = []

    def lock():
        conn = sqlite3.connect(str(db_path), isolation_level=None, timeout=5)
        conn.execute('BEGIN EXCLUSIVE')
        held.append(conn)
        return conn
    yield lock
    for conn in held:
        if conn.in_transaction:
            conn.execute('ROLLBACK')
        conn.close()


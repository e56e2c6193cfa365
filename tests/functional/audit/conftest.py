"""Audit functional fixtures: the real RabbitMQ, SQLite and PostgreSQL.

Isolation: each test gets its own ``control_exchange`` and pool (queue) name; the
PostgreSQL store lives in a throwaway database created for the session and dropped
at its end, with a fresh schema per test. Nothing here touches another database.
"""
import uuid

import pytest
import sqlalchemy as sa

from tests.functional.audit import databases
from tests.functional.audit import harness


@pytest.fixture(scope='session')
def pg_database():
    """A throwaway PostgreSQL database for the whole session."""
    name = 'aw_audit_ft_%s' % uuid.uuid4().hex[:10]
    admin = sa.create_engine(databases.PG_SERVER + 'postgres', isolation_level='AUTOCOMMIT')
    with admin.connect() as conn:
        conn.exec_driver_sql('CREATE DATABASE %s' % name)
    yield name
    with admin.connect() as conn:
        conn.exec_driver_sql('ALTER DATABASE %s ALLOW_CONNECTIONS true' % name)
        conn.exec_driver_sql('DROP DATABASE %s WITH (FORCE)' % name)
    admin.dispose()


@pytest.fixture(params=['sqlite', 'postgresql'])
def backend(request, tmp_path):
    if request.param == 'sqlite':
        db = databases.SQLiteBackend(tmp_path)
    else:
        db = databases.PostgreSQLBackend(request.getfixturevalue('pg_database'))
    yield db
    db.close()


@pytest.fixture
def broker():
    """A unique exchange and pool name; both deleted at the end."""
    broker = harness.Broker(exchange='aw-audit-ft-%s' % uuid.uuid4().hex[:10],
                            pool='aw-audit-ft-pool-%s' % uuid.uuid4().hex[:10])
    yield broker
    broker.close()


@pytest.fixture
def make_serve(tmp_path, broker, backend):
    started = []

    def make(**audit):
        serve = harness.Serve(tmp_path / ('serve%d' % len(started)), broker, backend.url,
                              **audit)
        started.append(serve)
        return serve
    yield make
    for serve in started:
        serve.stop()

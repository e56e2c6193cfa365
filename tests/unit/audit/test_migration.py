"""The schema comes from alembic migrations, and they match the code's tables."""
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
import pytest
import sqlalchemy as sa

from attachworker.audit import migration
from attachworker.audit import models
from attachworker.audit import store
from attachworker.exception import AuditSchemaOutdated


def test_upgrade_creates_the_tables_and_is_repeatable(tmp_path):
    engine = store.create_engine('sqlite:///%s' % (tmp_path / 'a.sqlite'))
    with pytest.raises(AuditSchemaOutdated, match='db upgrade'):
        migration.check(engine)
    migration.upgrade(engine)
    migration.upgrade(engine)
    migration.check(engine)
    assert set(sa.inspect(engine).get_table_names()) == {
        'alembic_version', 'events', 'operations', 'rejected'}


def test_migrations_match_the_models(engine):
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), models.metadata)
    assert diff == []


def test_sqlite_store_is_in_wal_mode(engine):
    with engine.connect() as conn:
        assert conn.exec_driver_sql('PRAGMA journal_mode').scalar() == 'wal'

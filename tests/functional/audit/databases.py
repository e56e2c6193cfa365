"""The audit functional tests' databases: SQLite files and a throwaway PostgreSQL.

Each can be taken away and given back (``outage``) and dumped whole (``dump``).
"""
import contextlib
import sqlite3
import subprocess

import sqlalchemy as sa

from attachworker.audit import migration
from attachworker.audit import store

PG_SERVER = 'postgresql+psycopg2://postgres@127.0.0.1:5432/'


class Backend:
    """One audit store for one test, and how to take it away and give it back."""

    name: str
    url: str

    def __init__(self) -> None:
        self.engine = store.create_engine(self.url)

    def count(self, table) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()

    def rows(self, table) -> list:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(table)).mappings()]

    def close(self) -> None:
        self.engine.dispose()


class SQLiteBackend(Backend):
    name = 'sqlite'

    def __init__(self, tmp_path) -> None:
        self.path = tmp_path / 'audit.sqlite'
        self.url = 'sqlite:///%s' % self.path
        super().__init__()
        migration.upgrade(self.engine)

    @contextlib.contextmanager
    def outage(self):
        """Another process holds the write lock: every write fails after its wait."""
        conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
        conn.execute('BEGIN EXCLUSIVE')
        try:
            yield
        finally:
            conn.execute('ROLLBACK')
            conn.close()

    def dump(self) -> str:
        conn = sqlite3.connect(str(self.path))
        try:
            return '\n'.join(conn.iterdump())
        finally:
            conn.close()


class PostgreSQLBackend(Backend):
    name = 'postgresql'

    def __init__(self, database: str) -> None:
        self.database = database
        self.url = PG_SERVER + database
        self.admin = sa.create_engine(PG_SERVER + 'postgres', isolation_level='AUTOCOMMIT')
        super().__init__()
        with self.engine.begin() as conn:  # a fresh schema for each test
            conn.exec_driver_sql('DROP SCHEMA public CASCADE')
            conn.exec_driver_sql('CREATE SCHEMA public')
        migration.upgrade(self.engine)

    @contextlib.contextmanager
    def outage(self):
        """No new connections to this database, and its open ones cut."""
        with self.admin.connect() as conn:
            conn.exec_driver_sql('ALTER DATABASE %s ALLOW_CONNECTIONS false'
                                 % self.database)
            conn.exec_driver_sql(
                'SELECT pg_terminate_backend(pid) FROM pg_stat_activity '
                'WHERE datname = %(db)s AND pid <> pg_backend_pid()',
                {'db': self.database})
        try:
            yield
        finally:
            with self.admin.connect() as conn:
                conn.exec_driver_sql('ALTER DATABASE %s ALLOW_CONNECTIONS true'
                                     % self.database)

    def dump(self) -> str:
        return subprocess.run(['pg_dump', '-h', '127.0.0.1', '-U', 'postgres',
                               '--data-only', self.database], check=True,
                              capture_output=True, text=True).stdout

    def close(self) -> None:
        super().close()
        self.admin.dispose()

"""Schema migrations with alembic, driven from code as OpenStack projects do.

The scripts live in this package (``attachworker/audit/migrations``), so an
installed attachworker can upgrade its own database: ``attachworker-audit db
upgrade``. ``serve`` refuses to start on a schema that is not at head.
"""
import os

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
import sqlalchemy as sa

from attachworker.exception import AuditSchemaOutdated

SCRIPT_LOCATION = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'migrations')


def _config() -> Config:
    config = Config()
    config.set_main_option('script_location', SCRIPT_LOCATION)
    return config


def head() -> str:
    return ScriptDirectory.from_config(_config()).get_current_head()


def current(engine: sa.engine.Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: sa.engine.Engine, revision: str = 'head') -> None:
    """Bring the schema to ``revision``; safe to run again (a no-op at head)."""
    config = _config()
    with engine.begin() as conn:
        config.attributes['connection'] = conn
        command.upgrade(config, revision)


def check(engine: sa.engine.Engine) -> None:
    """Raise AuditSchemaOutdated unless the schema is at head."""
    found, wanted = current(engine), head()
    if found != wanted:
        raise AuditSchemaOutdated(current=found or 'none (empty database)', head=wanted)

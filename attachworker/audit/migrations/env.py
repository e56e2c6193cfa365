"""alembic environment: runs on the connection attachworker.audit.migration hands over.

Run by hand, the URL comes from ``-x url=...`` (see alembic.ini).
"""
from alembic import context
import sqlalchemy as sa

from attachworker.audit import models


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=models.metadata,
                      render_as_batch=connection.dialect.name == 'sqlite')
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get('connection')
if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get('url')
    if not url:
        raise SystemExit('give the database with -x url=<SQLAlchemy URL>')
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        _run(conn)

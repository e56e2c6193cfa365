"""[audit]: the audit consumer's store and pool."""
from oslo_config import cfg

GROUP = 'audit'

audit_opts = [
    cfg.StrOpt('connection',
               secret=True,
               help="""
SQLAlchemy URL of the audit store. Unset: SQLite file ``<state_path>/audit.sqlite``.

Possible values:

* ``sqlite:////var/lib/attachworker/audit.sqlite``
* ``postgresql+psycopg2://user:password@127.0.0.1/attachworker_audit``
"""),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(audit_opts, group=GROUP)


def list_opts():
    return [(GROUP, audit_opts)]

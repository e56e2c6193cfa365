"""[audit]: the audit consumer's store and pool."""
from oslo_config import cfg

GROUP = 'audit'

audit_opts = [
    cfg.StrOpt('connection',
               secret=True,
               help="""
SQLAlchemy URL of the audit store. Unset: SQLite file
``<state_path>/audit.sqlite``.

Possible values:

* ``sqlite:////var/lib/attachworker/audit.sqlite``
* ``postgresql+psycopg2://user:password@127.0.0.1/attachworker_audit``

Related options:

* ``[DEFAULT] state_path``: where the default SQLite file lives.
* ``sqlite_busy_timeout``: how long an SQLite writer waits for the lock.
"""),
    cfg.StrOpt('pool',
               help=r"""
Name of a notification pool (a RabbitMQ queue of its own) for audit
consumers to read from. Unset (the default), they read the queues the
worker's notifier itself declares and fills, ``versioned_notifications.info``
and ``.error``: nothing is left there to grow unread.

Every ``attachworker-audit serve`` reading the same queues competes for the
same messages, so adding consumers spreads the load and each notification
is stored once.

Possible values:

* unset: the notifier's own queues (the default; one audit store).
* A queue name: only when two independent audit stores must each receive
  every notification. The notifier's queues then fill with what nobody
  reads: cap them with a RabbitMQ policy, for example
  ``rabbitmqctl set_policy aw-notifications '^versioned_notifications\.'
  '{"max-length": 100000, "overflow": "drop-head"}' --apply-to queues``.

Related options:

* ``[DEFAULT] control_exchange``: the exchange the queues are bound to.
"""),
    cfg.IntOpt('batch_size',
               default=64,
               min=1,
               help="""
Most notifications stored in one database transaction.

The consumer takes what has arrived, up to this many, stores the batch
in one transaction and only then acknowledges each message. Larger
batches mean fewer commits (much faster, on SQLite and PostgreSQL
alike); while the database is unavailable the whole batch is held.

Related options:

* ``batch_timeout``
* ``[oslo_messaging_rabbit] rabbit_qos_prefetch_count``: ``serve``
  defaults it to four batches, so the broker always has the next batch
  on its way.
"""),
    cfg.FloatOpt('batch_timeout',
                 default=0.2,
                 min=0.0,
                 help="""
Seconds the consumer waits for a batch to fill before storing what it
has: the longest a notification waits for its row when traffic is light.

Related options:

* ``batch_size``
"""),
    cfg.FloatOpt('sqlite_busy_timeout',
                 default=10.0,
                 min=0.0,
                 help="""
Seconds an SQLite writer waits for another process's write lock before
the write fails and the notification is held and retried. Ignored for other
databases.

Related options:

* ``db_retry_interval``: the pause before a held message is retried.
"""),
    cfg.FloatOpt('db_retry_interval',
                 default=0.2,
                 min=0.0,
                 help="""
Seconds to wait before storing a notification again after the first
database error. Meanwhile the notification is held (neither acknowledged
nor requeued, so an outage of any length costs it no delivery). The wait
doubles on each consecutive error, up to ``db_max_retry_interval``, and
resets after the first successful write, so a database outage never turns
into a retry loop.

Related options:

* ``db_max_retry_interval``
"""),
    cfg.FloatOpt('db_max_retry_interval',
                 default=2.0,
                 min=0.0,
                 help="""
Longest wait, in seconds, before storing a held notification again while
the database keeps failing.

Related options:

* ``db_retry_interval``
"""),
    cfg.IntOpt('max_message_size',
               default=64 * 1024,
               min=1024,
               help="""
Largest notification, in bytes, the audit consumer stores. Larger
messages are recorded in the ``rejected`` table (with an excerpt) and
acknowledged. A contract notification is well under 4 KiB.

Related options:

* ``rejected_excerpt_length``
"""),
    cfg.IntOpt('rejected_excerpt_length',
               default=2048,
               min=64,
               help="""
Characters of a rejected message kept in the ``rejected`` table, after
secrets are masked.
"""),
    cfg.IntOpt('open_operation_timeout',
               default=600,
               min=0,
               help="""
Seconds after which an operation that has a ``.start`` and no ``.end``
or ``.error`` counts as open in ``attachworker-audit stats``.

Possible values:

* 0: every operation without an end counts as open.
* A number of seconds a little above the longest attach you expect.

Related options:

* ``attachworker-audit stats --open-timeout`` overrides it for one run.
"""),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(audit_opts, group=GROUP)


def list_opts():
    return [(GROUP, audit_opts)]

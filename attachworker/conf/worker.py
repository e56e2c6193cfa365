"""[worker]: how the compute worker serves casts and shuts down."""
from oslo_config import cfg

GROUP = 'worker'

worker_opts = [
    cfg.IntOpt('graceful_shutdown_timeout',
               default=60,
               min=0,
               help="""
Seconds that in-flight operations get to finish after SIGTERM. Operations still
running then are undone and end with an ``.error`` notification.
"""),
    cfg.IntOpt('reconcile_interval',
               default=600,
               min=0,
               help="""
Seconds between two runs of the journal check that finishes or undoes unfinished
operations. 0 disables the periodic run (start-up recovery still happens).
"""),
    cfg.StrOpt('recovery_action',
               default='undo',
               choices=[('undo', 'undo every unfinished operation (volume available again)'),
                        ('finish', 'complete it in Cinder when the virt driver had attached; '
                                   'undo the others')],
               help="""
What recovery does with an operation a dead worker left unfinished. An operation
whose last Cinder step had completed is always finished.

Related options:

* ``reconcile_interval``
"""),
    cfg.IntOpt('journal_retention_days',
               default=7,
               min=1,
               help='Days a finished operation stays in the journal before it is pruned.'),
    cfg.IntOpt('reservation_timeout',
               default=600,
               min=1,
               help="""
Seconds a device name returned by ``reserve_block_device_name`` stays reserved
when no attach uses it (the controller died, or gave up). Expired reservations
are released at the next housekeeping round (every few seconds).
"""),
    cfg.IntOpt('max_argument_length',
               default=255,
               min=16,
               help="""
Longest string accepted in an RPC argument (display names, ids...). Longer
arguments make the cast fail validation before any Cinder call.
"""),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(worker_opts, group=GROUP)


def list_opts():
    return [(GROUP, worker_opts)]

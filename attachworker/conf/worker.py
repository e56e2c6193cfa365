"""[worker]: how the compute worker serves casts and shuts down."""
from oslo_config import cfg

GROUP = 'worker'

worker_opts = [
    cfg.IntOpt('workers',
               default=1,
               min=1,
               help="""
Processes that serve this host's casts, as nova-conductor's ``workers``. 1
(the default): one process consumes the host queue and runs every cast in
its thread pool, as it always has; a pipeline waiting on Cinder is served
well by threads alone, and one process is the simplest to run. More than 1
is for a worker that is CPU-bound (one Python process uses one core at
most): set it to the cores the host gives the worker. The main process
then runs start-up recovery once, is the only consumer of the host queue,
answers ``reserve_block_device_name`` itself, and hands each cast to one
of N child processes chosen by a stable hash of its instance uuid; a child
runs one instance's casts one at a time, in the order they arrived, so
per-instance order holds. A child that dies is replaced once its
unfinished operations are recovered; SIGTERM drains every child. Periodic
recovery, the outbox flush, reservation expiry and ``[metrics] port`` stay
in the main process, whose endpoint also serves the children's per-cast
metrics (sent to it every second in which they change).
The default ``rabbit_qos_prefetch_count`` becomes N times 64 (what N
children's threads take).
"""),
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

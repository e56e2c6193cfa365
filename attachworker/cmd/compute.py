"""attachworker-compute: the RPC worker of one compute host.

``[worker] workers = N > 1``: this process is the main one (attachworker.worker.workers)
and starts N children, each this same module and command line with
``ATTACHWORKER_WORKER_CHILD`` in its environment (attachworker.worker.child).
"""
import functools
import os
import sys

from oslo_config import cfg
from oslo_log import log as logging

from attachworker import config
from attachworker import connector
from attachworker import exception
from attachworker import metrics
from attachworker import rpc
from attachworker import virt
from attachworker.cinder import CinderAPI
from attachworker.manager import ComputeManager
from attachworker.notifications import Notifier
from attachworker.worker import child_metrics
from attachworker.worker import locks
from attachworker.worker import service
from attachworker.worker import slot
from attachworker.worker import workers
from attachworker.worker.child import ChildService
from attachworker.worker.journal import Journal
from attachworker.worker.outbox import Outbox
from attachworker.worker.recovery import Recovery

LOG = logging.getLogger(__name__)


def _collaborators(conf: cfg.ConfigOpts, notification_transport: object,
                   journal: Journal) -> tuple:
    outbox = Outbox(journal, Notifier(notification_transport, conf.host))
    cinder_api = CinderAPI(conf, threads=conf.executor_thread_pool_size)
    driver = virt.load_driver(conf)
    manager = ComputeManager(conf, cinder_api, driver, outbox,
                             functools.partial(connector.get_connector_properties, conf))
    return outbox, cinder_api, driver, manager


def main() -> int:
    conf = cfg.CONF
    config.parse_args(conf, sys.argv, 'attachworker-compute')
    child = slot.child_of(os.environ)
    if child is not None:
        return _child(conf, *child)
    try:
        locks.probe(conf.state_path)
    except exception.LocksUnavailable as exc:
        LOG.error('%s', exc)
        return 1
    count = conf.worker.workers
    if count > 1:  # the one consumer holds what every child's threads can take
        conf.set_default('rabbit_qos_prefetch_count', rpc.PREFETCH * count,
                         group='oslo_messaging_rabbit')
    transport = rpc.get_rpc_transport(conf)
    notification_transport = rpc.get_notification_transport(conf)
    journal = workers.SettledJournal(conf.state_path) if count > 1 else \
        Journal(conf.state_path)
    outbox, cinder_api, driver, manager = _collaborators(conf, notification_transport,
                                                         journal)
    recovery = Recovery(conf, cinder_api, driver, outbox)
    supervisor = None
    if count > 1:
        recovery = workers.SerialRecovery(recovery)
        supervisor = workers.Supervisor(count, sys.argv, recovery.run)
        journal.children_alive = supervisor.alive
        child_metrics.serve_merged()  # the children's per-cast metrics on this endpoint
    metrics.watch_journal(outbox.journal)
    try:
        metrics.serve(conf, 'attachworker-compute')
    except exception.MetricsUnavailable as exc:
        LOG.error('%s', exc)
        return 1
    server = rpc.get_rpc_server(transport, conf.host, manager, manager.reject,
                                known_cast=outbox.journal.known_cast,
                                route=supervisor.route if supervisor else None)
    LOG.info('attachworker-compute on host %(host)s, exchange %(exchange)s, '
             '%(threads)d threads, %(workers)s, journal %(journal)s',
             {'host': conf.host, 'exchange': conf.control_exchange,
              'threads': conf.executor_thread_pool_size, 'journal': outbox.journal.path,
              'workers': '%d worker processes' % count if count > 1 else 'one process'})
    code = service.WorkerService(server, manager, recovery, outbox, conf,
                                 workers=supervisor).run()
    transport.cleanup()
    notification_transport.cleanup()
    return code


def _child(conf: cfg.ConfigOpts, index: int, count: int, fd: int) -> int:
    """One of the main process's workers: no RPC server, no recovery, no metrics port."""
    conn = slot.connection(fd)
    notification_transport = rpc.get_notification_transport(conf)
    outbox, cinder_api, driver, manager = _collaborators(conf, notification_transport,
                                                         Journal(conf.state_path))
    code = ChildService(conn, rpc.get_dispatcher(manager, manager.reject), manager,
                        outbox, conf, index, count,
                        recovery=Recovery(conf, cinder_api, driver, outbox)).run()
    notification_transport.cleanup()
    return code


if __name__ == '__main__':
    sys.exit(main())

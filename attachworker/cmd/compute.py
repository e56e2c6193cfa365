"""attachworker-compute: the RPC worker of one compute host."""
import functools
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
from attachworker.worker import service
from attachworker.worker.journal import Journal
from attachworker.worker.outbox import Outbox
from attachworker.worker.recovery import Recovery

LOG = logging.getLogger(__name__)


def main() -> int:
    conf = cfg.CONF
    config.parse_args(conf, sys.argv, 'attachworker-compute')
    transport = rpc.get_rpc_transport(conf)
    notification_transport = rpc.get_notification_transport(conf)
    outbox = Outbox(Journal(conf.state_path), Notifier(notification_transport, conf.host))
    cinder_api = CinderAPI(conf)
    driver = virt.load_driver(conf)
    manager = ComputeManager(conf, cinder_api, driver, outbox,
                             functools.partial(connector.get_connector_properties, conf))
    recovery = Recovery(conf, cinder_api, driver, outbox)
    metrics.watch_journal(outbox.journal)
    try:
        metrics.serve(conf, 'attachworker-compute')
    except exception.MetricsUnavailable as exc:
        LOG.error('%s', exc)
        return 1
    server = rpc.get_rpc_server(transport, conf.host, manager, manager.reject,
                                known_cast=outbox.journal.known_cast)
    LOG.info('attachworker-compute on host %(host)s, exchange %(exchange)s, '
             '%(threads)d threads, journal %(journal)s',
             {'host': conf.host, 'exchange': conf.control_exchange,
              'threads': conf.executor_thread_pool_size, 'journal': outbox.journal.path})
    code = service.WorkerService(server, manager, recovery, outbox, conf).run()
    transport.cleanup()
    notification_transport.cleanup()
    return code


if __name__ == '__main__':
    sys.exit(main())

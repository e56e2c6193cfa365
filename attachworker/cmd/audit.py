"""attachworker-audit: store volume notifications, and answer who did what.

Sub-commands: ``serve``, ``db upgrade [REVISION]`` / ``db version``, ``list``
(filters ``--volume --instance --host --project --outcome --action --since
--until``, ``--limit``), ``show REQUEST_ID``, ``stats [--open-timeout S]``; the
query commands take ``--format table|json``. Exit codes: 0 done, 1 an expected
failure (unknown request id, schema not upgraded, database unavailable), 2 bad
arguments.
"""
import dataclasses
import logging as logging_std
import os
import signal
import sys
import threading
import time
from typing import Optional

from oslo_config import cfg
from oslo_log import log as logging

from attachworker import config
from attachworker import exception
from attachworker import metrics
from attachworker import rpc
from attachworker.audit import backoff
from attachworker.audit import consumer
from attachworker.audit import formatting
from attachworker.audit import listener
from attachworker.audit import migration
from attachworker.audit import queries
from attachworker.audit import store

LOG = logging.getLogger(__name__)

#: oslo.messaging's default prefetch (0) lets one consumer take a whole backlog into
#: memory, so competing consumers would not share it; a few batches keep the next
#: one on its way. Operators can still set rabbit_qos_prefetch_count themselves.
PREFETCH_BATCHES = 4
SHUTDOWN_TIMEOUT = 60
ACK_GRACE = 0.2


def _filters_arguments(parser) -> None:
    # dest names are prefixed: the sub-command's namespace shares oslo.config's
    # attribute lookup, where ``host`` is already [DEFAULT] host.
    parser.add_argument('--volume', dest='by_volume_id', help='volume UUID')
    parser.add_argument('--instance', dest='by_instance_uuid', help='instance UUID')
    parser.add_argument('--host', dest='by_host', help='compute host')
    parser.add_argument('--project', dest='by_project_id', help='project id')
    parser.add_argument('--outcome', dest='by_outcome',
                        choices=('pending', 'success', 'error'))
    parser.add_argument('--action', dest='by_action', choices=('attach', 'detach', 'extend'))
    parser.add_argument('--since', dest='by_since', type=queries.parse_time,
                        help='ISO 8601 time (UTC unless it has an offset) or an age '
                             'such as 90m, 12h, 7d')
    parser.add_argument('--until', dest='by_until', type=queries.parse_time,
                        help='as --since')
    _format_argument(parser)


def _format_argument(parser) -> None:
    parser.add_argument('--format', choices=('table', 'json'), default='table')


def _add_commands(subparsers) -> None:
    subparsers.add_parser('serve', help='consume notifications into the audit store')
    db = subparsers.add_parser('db', help='manage the audit database schema')
    db_actions = db.add_subparsers(dest='db_action', required=True)
    upgrade = db_actions.add_parser('upgrade', help='migrate the schema (to head)')
    upgrade.add_argument('revision', nargs='?', default='head')
    db_actions.add_parser('version', help='print the schema revision')
    list_parser = subparsers.add_parser('list', help='list operations')
    _filters_arguments(list_parser)
    list_parser.add_argument('--limit', type=int, help='only the newest N operations')
    show = subparsers.add_parser('show', help='the timeline of one operation')
    show.add_argument('request_id')
    _format_argument(show)
    stats = subparsers.add_parser('stats', help='counts, durations, open operations')
    _filters_arguments(stats)
    stats.add_argument('--open-timeout', type=float, dest='open_timeout',
                       help='seconds; default [audit] open_operation_timeout')


def _engine(conf: cfg.ConfigOpts):
    url = conf.audit.connection or store.default_url(conf.state_path)
    return store.create_engine(url, busy_timeout=conf.audit.sqlite_busy_timeout)


def _filters(command) -> queries.Filters:
    return queries.Filters(**{field.name: getattr(command, 'by_' + field.name)
                              for field in dataclasses.fields(queries.Filters)})


def _print(text: str) -> None:
    sys.stdout.write(text + '\n')


def _output(conf: cfg.ConfigOpts, data, render) -> int:
    _print(formatting.to_json(data) if conf.command.format == 'json' else render(data))
    return 0


def serve(conf: cfg.ConfigOpts) -> int:
    engine = _engine(conf)
    migration.check(engine)
    audit_store = store.Store(engine)
    endpoint = consumer.AuditEndpoint(
        audit_store, max_message_size=conf.audit.max_message_size,
        excerpt_length=conf.audit.rejected_excerpt_length,
        backoff=backoff.Backoff(conf.audit.db_retry_interval,
                                 conf.audit.db_max_retry_interval))
    conf.set_default('rabbit_qos_prefetch_count', PREFETCH_BATCHES * conf.audit.batch_size,
                     group='oslo_messaging_rabbit')
    transport = rpc.get_notification_transport(conf)
    server = listener.get_listener(transport, rpc.NOTIFICATION_TOPIC, endpoint,
                                   conf.audit.pool or None, conf.audit.max_message_size,
                                   conf.audit.batch_size, conf.audit.batch_timeout)
    try:
        metrics.serve(conf, 'attachworker-audit')
    except exception.MetricsUnavailable as exc:
        LOG.error('%s', exc)
        return 1
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    if not rpc.start_server(server, stopping, conf, 'attachworker-audit'):
        LOG.info('Audit consumer stopped: 0 stored, 0 duplicates, 0 rejected, 0 requeued')
        for handler in logging_std.getLogger().handlers:
            handler.flush()
        os._exit(0)  # the thread still trying to connect would hold the exit
    LOG.info('Audit consumer listening: exchange %(exchange)s, topic %(topic)s, pool '
             '%(pool)s, store %(store)s',
             {'exchange': conf.control_exchange, 'topic': rpc.NOTIFICATION_TOPIC,
              'pool': conf.audit.pool or "the notifier's own queues",
              'store': engine.url.render_as_string(hide_password=True)})
    while not stopping.wait(1):
        pass
    LOG.info('Stopping: no new messages; finishing the ones in flight')
    server.stop()
    endpoint.stop()
    left = endpoint.drain(SHUTDOWN_TIMEOUT)
    if left:
        LOG.warning('%d notifications still being handled after %ds; they will be '
                    'redelivered', left, SHUTDOWN_TIMEOUT)
    # oslo.messaging sends the last acks from a thread that cleanup (in wait())
    # stops without a final pass; give the acks of what just finished time to go,
    # or they would be redelivered (harmless, but counted as duplicates).
    time.sleep(ACK_GRACE)
    server.wait()
    transport.cleanup()
    audit_store.dispose()
    LOG.info('Audit consumer stopped: %(stored)d stored, %(duplicate)d duplicates, '
             '%(rejected)d rejected, %(requeued)d requeued', endpoint.counts)
    return 0


def db(conf: cfg.ConfigOpts) -> int:
    engine = _engine(conf)
    if conf.command.db_action == 'upgrade':
        before = migration.current(engine)
        migration.upgrade(engine, conf.command.revision)
        _print('Upgraded the audit database from %s' % (before or 'empty'))
    _print('Audit database at revision %s (head %s)' % (migration.current(engine),
                                                        migration.head()))
    return 0


def list_(conf: cfg.ConfigOpts) -> int:
    return _output(conf, queries.list_operations(_engine(conf), _filters(conf.command),
                                                 conf.command.limit), formatting.operations)


def show(conf: cfg.ConfigOpts) -> int:
    return _output(conf, queries.get_operation(_engine(conf), conf.command.request_id),
                   formatting.operation)


def stats(conf: cfg.ConfigOpts) -> int:
    timeout = conf.command.open_timeout
    return _output(conf, queries.stats(_engine(conf), _filters(conf.command),
                                       conf.audit.open_operation_timeout
                                       if timeout is None else timeout),
                   formatting.stats)


COMMANDS = {'serve': serve, 'db': db, 'list': list_, 'show': show, 'stats': stats}


def main(argv: Optional[list] = None, conf: Optional[cfg.ConfigOpts] = None) -> int:
    """Console script. ``argv`` excludes the program name; ``conf`` is for tests,
    the process uses ``cfg.CONF``."""
    conf = cfg.CONF if conf is None else conf
    conf.register_cli_opt(cfg.SubCommandOpt('command', title='Commands',
                                            handler=_add_commands))
    config.parse_args(conf, ['attachworker-audit']
                      + (sys.argv[1:] if argv is None else argv), 'attachworker-audit')
    if conf.command.name != 'db':
        # alembic's per-connection INFO lines say nothing here; upgrades keep them.
        logging_std.getLogger('alembic.runtime.migration').setLevel(logging_std.WARNING)
    try:
        with store.translate_errors():
            return COMMANDS[conf.command.name](conf)
    except exception.AttachWorkerException as exc:
        if not exc.expected:
            LOG.exception('attachworker-audit %s failed', conf.command.name)
        sys.stderr.write('ERROR: %s\n' % exc)
        return 1


if __name__ == '__main__':
    sys.exit(main())

"""The audit functional tests' harness: databases, broker, serve processes.

Broker hygiene: oslo.messaging's notifier declares a queue named after the routing
key (``versioned_notifications.info``) and binds it to every exchange it publishes
to, so it would keep a copy of every test message forever. Each test's exchange is
deleted at the end and its copies drained from those shared queues (``cleanup``).
"""
import contextlib
import pathlib
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import kombu
from oslo_config import cfg
import oslo_messaging as messaging
from oslo_messaging import opts as messaging_opts
import sqlalchemy as sa

from attachworker.audit import migration
from attachworker.audit import store
from attachworker.audit import testing

RABBIT = 'rabbit://guest:guest@127.0.0.1:5672/'
AMQP = 'amqp://guest:guest@127.0.0.1:5672//'
PG_SERVER = 'postgresql+psycopg2://postgres@127.0.0.1:5432/'
BIN = pathlib.Path(sys.executable).parent
DEFAULT_QUEUES = ('versioned_notifications.info', 'versioned_notifications.error')


# --- databases ----------------------------------------------------------------------

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


# --- the broker -------------------------------------------------------------------

def cleanup(connection, exchange: str, pool: str) -> None:
    """Delete a test's queue and exchange; drain its copies from the shared queues."""
    with contextlib.suppress(Exception):
        connection.channel().queue_delete(pool)
    with contextlib.suppress(Exception):
        connection.channel().exchange_delete(exchange)
    for name in DEFAULT_QUEUES:
        channel = connection.channel()
        try:
            _, waiting, _ = channel.queue_declare(name, passive=True)
        except Exception:  # no such queue (and the channel is closed)
            continue
        others = []
        for _ in range(waiting):
            message = channel.basic_get(name, no_ack=False)
            if message is None:
                break
            if message.delivery_info.get('exchange') == exchange:
                channel.basic_ack(message.delivery_tag)
            else:
                others.append(message.delivery_tag)
        for tag in others:  # someone else's: put it back
            channel.basic_reject(tag, requeue=True)
        channel.close()


class Broker:
    def __init__(self, connection, exchange: str, pool: str) -> None:
        self.connection = connection
        self.exchange = exchange
        self.pool = pool
        self._transport = None

    def transport(self) -> messaging.Transport:
        if self._transport is None:
            conf = cfg.ConfigOpts()
            for group, opts in messaging_opts.list_opts():
                conf.register_opts(opts, group=group)
            conf([])
            conf.set_override('transport_url', RABBIT)
            conf.set_override('control_exchange', self.exchange)
            self._transport = messaging.get_notification_transport(conf)
        return self._transport

    def publisher(self, host: str = 'compute-1') -> testing.Publisher:
        return testing.Publisher(self.transport(), host=host)

    def publish_raw(self, body, routing_key='versioned_notifications.info',
                    content_type='application/json', content_encoding='utf-8') -> None:
        """Whatever bytes, straight to the exchange: what no Notifier would send."""
        producer = self.connection.Producer()
        producer.publish(body, exchange=kombu.Exchange(self.exchange, 'topic',
                                                       durable=False),
                         routing_key=routing_key, content_type=content_type,
                         content_encoding=content_encoding)

    def queue_depth(self) -> tuple:
        """(ready, consumers) of the pool queue."""
        _, ready, consumers = self.connection.channel().queue_declare(self.pool,
                                                                      passive=True)
        return ready, consumers

    def close(self) -> None:
        if self._transport is not None:
            self._transport.cleanup()


# --- attachworker-audit serve as a subprocess ----------------------------------------

STOPPED = re.compile(r'Audit consumer stopped: (\d+) stored, (\d+) duplicates, '
                     r'(\d+) rejected, (\d+) requeued')


class Serve:
    """``attachworker-audit serve`` in its own process, with its own config and log."""

    def __init__(self, directory: pathlib.Path, broker: Broker, url: str, **audit) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.log = directory / 'audit.log'
        audit.setdefault('pool', broker.pool)
        audit['connection'] = url
        self.config = directory / 'audit.conf'
        self.config.write_text(
            '[DEFAULT]\ntransport_url = %s\ncontrol_exchange = %s\nstate_path = %s\n'
            'log_file = %s\n[audit]\n%s' % (
                RABBIT, broker.exchange, directory / 'state', self.log,
                ''.join('%s = %s\n' % item for item in audit.items())))
        self.proc = None

    def command(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / 'attachworker-audit'), '--config-file',
                               str(self.config), *args], capture_output=True, text=True,
                              timeout=120)

    def start(self, timeout: float = 30) -> 'Serve':
        self.output = open(self.log.with_suffix('.out'), 'w')
        self.proc = subprocess.Popen([str(BIN / 'attachworker-audit'), '--config-file',
                                      str(self.config), 'serve'],
                                     stdout=self.output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log.exists() and 'Audit consumer listening' in self.log.read_text():
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError('serve did not start:\n' + self.logs()[-3000:])

    def stop(self, timeout: float = 60) -> int:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.output.close()
        return self.proc.returncode if self.proc else None

    def counts(self) -> dict:
        """What it said it did, from its last line."""
        found = STOPPED.findall(self.logs())
        assert found, 'no "stopped" line in the log:\n' + self.logs()[-2000:]
        return dict(zip(('stored', 'duplicate', 'rejected', 'requeued'),
                        map(int, found[-1]), strict=True))

    def logs(self) -> str:
        text = self.log.read_text() if self.log.exists() else ''
        out = self.log.with_suffix('.out')
        return text + (out.read_text() if out.exists() else '')


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError('timed out waiting for ' + what)
        time.sleep(interval)


def publish_in_threads(publisher_factory, messages: list, threads: int = 4) -> float:
    """Send (message, ctxt) pairs through oslo.messaging from a few threads; seconds."""
    chunks = [messages[i::threads] for i in range(threads)]
    began = time.monotonic()

    def run(chunk):
        publisher = publisher_factory()
        for msg in chunk:
            publisher.send(msg)
    workers = [threading.Thread(target=run, args=(chunk,)) for chunk in chunks]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.monotonic() - began


"""The audit functional tests' harness: broker, serve processes, waiting.

Broker hygiene: oslo.messaging's notifier declares a queue named after the routing
key (``versioned_notifications.info``) and binds it to every exchange it publishes
to, so it would keep a copy of every test message forever. Each test's exchange is
deleted at the end and its copies drained from those shared queues (``cleanup``).
"""
import contextlib
import pathlib
import re
import subprocess
import sys
import threading
import time

import kombu
from oslo_config import cfg
import oslo_messaging as messaging
from oslo_messaging import opts as messaging_opts

from attachworker.audit import testing
from tests.harness import terminate

RABBIT = 'rabbit://guest:guest@127.0.0.1:5672/'
AMQP = 'amqp://guest:guest@127.0.0.1:5672//'
BIN = pathlib.Path(sys.executable).parent
DEFAULT_QUEUES = ('versioned_notifications.info', 'versioned_notifications.error')


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
    """A test's exchange and pool on the real broker. Each raw operation opens its
    own short connection: a connection idle for a long test would be dropped."""

    def __init__(self, exchange: str, pool: str) -> None:
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
        with kombu.Connection(AMQP) as conn:
            conn.Producer().publish(
                body, exchange=kombu.Exchange(self.exchange, 'topic', durable=False),
                routing_key=routing_key, content_type=content_type,
                content_encoding=content_encoding)

    def queue_depth(self) -> tuple:
        """(ready, consumers) of the pool queue."""
        with kombu.Connection(AMQP) as conn:
            _, ready, consumers = conn.channel().queue_declare(self.pool, passive=True)
        return ready, consumers

    def unsettled(self) -> int:
        """Messages of the pool queue not yet acknowledged: waiting, or delivered and
        still being handled (``ready`` alone is 0 as soon as a consumer has prefetched
        them; rabbitmqctl asks the queue itself, no statistics delay)."""
        out = subprocess.run(['rabbitmqctl', 'list_queues', '-q', '--no-table-headers',
                              '-p', '/', 'name', 'messages'], capture_output=True, text=True,
                             check=True, timeout=60).stdout
        return next(int(line.split()[1]) for line in out.splitlines()
                    if line.split()[:1] == [self.pool])

    def close(self) -> None:
        if self._transport is not None:
            self._transport.cleanup()
        with kombu.Connection(AMQP) as conn:
            cleanup(conn, self.exchange, self.pool)


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
        running = self.proc is not None and self.proc.poll() is None
        code = terminate(self.proc, timeout)
        if running:
            self.output.close()
        return code

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


"""Watching for the outcome notification of one request (``attachworker-cast --wait``).

An oslo.messaging notification listener needs a named pool queue that outlives the
process and keeps filling up after it exits; a one-shot watcher must leave nothing
behind. So this adapter owns kombu (the library under oslo.messaging's rabbit
driver) and binds a private, exclusive, auto-deleted queue to the notification
routing keys of the exchange. It speaks only to AMQP brokers, as the rabbit driver.

A private queue dies with its connection, so a broker restart loses it and the
watcher fails. A watcher that must outlive a restart names its queue instead
(``OutcomeWatcher(conf, queue='...')``): durable, shared by nobody, deleted on exit
(and by the broker ``QUEUE_EXPIRES`` s after its last consumer left, should the
process die first). On a lost connection it reconnects and declares it again, and
gets what was routed to it meanwhile. Notifications are persistent, so they survive
the restart with the queue; the binding does too when the exchange is durable
(``[oslo_messaging_rabbit] amqp_durable_queues = true``), otherwise what is
published before the watcher has reconnected is lost.
"""
import json
import socket
import ssl
import time
from typing import Any
from typing import Callable
from typing import Optional
from urllib import parse

import kombu
from oslo_config import cfg
import oslo_messaging as messaging

from attachworker import rpc

PRIORITIES = ('info', 'error')
#: A named queue left behind by a dead watcher is deleted this long after (s).
QUEUE_EXPIRES = 600


def broker_url(conf: cfg.ConfigOpts) -> str:
    """The kombu URL of every broker of ``[DEFAULT] transport_url``, as kombu's
    failover list (``amqp://a;amqp://b``): the watcher connects to whichever answers,
    as the rabbit driver does."""
    url = messaging.TransportURL.parse(conf, conf.transport_url)
    if not url.hosts:
        return 'amqp://guest:guest@127.0.0.1:5672//'
    vhost = parse.quote(url.virtual_host or '/', safe='')
    default_port = 5671 if ssl_options(conf) else 5672
    urls = []
    for host in url.hosts:
        auth = ''
        if host.username:
            auth = parse.quote(host.username, safe='')
            if host.password:
                auth += ':' + parse.quote(host.password, safe='')
            auth += '@'
        urls.append('amqp://%s%s:%s/%s' % (auth, host.hostname, host.port or default_port,
                                           vhost))
    return ';'.join(urls)


def ssl_options(conf: cfg.ConfigOpts) -> Any:
    """kombu's ``ssl`` argument from ``[oslo_messaging_rabbit] ssl`` and its files
    (False when TLS is off), as the rabbit driver builds it."""
    rabbit = conf.oslo_messaging_rabbit
    if not rabbit.ssl:
        return False
    options: dict = {}
    if rabbit.ssl_ca_file:
        options['ca_certs'] = rabbit.ssl_ca_file
        options['cert_reqs'] = ssl.CERT_REQUIRED
    if rabbit.ssl_cert_file:
        options['certfile'] = rabbit.ssl_cert_file
    if rabbit.ssl_key_file:
        options['keyfile'] = rabbit.ssl_key_file
    return options or True


def decode(body: Any) -> dict:
    """A notification as the publisher sent it: unwrap oslo.messaging's envelope."""
    message = json.loads(body) if isinstance(body, (str, bytes)) else body
    if isinstance(message, dict) and 'oslo.message' in message:
        message = json.loads(message['oslo.message'])
    if not isinstance(message, dict):
        raise ValueError('not a notification')
    return message


def request_id_of(notification: dict) -> Optional[str]:
    payload = notification.get('payload')
    if isinstance(payload, dict):
        return (payload.get('attachworker_object.data') or {}).get('request_id')
    return None


class OutcomeWatcher:
    """Collects attachworker notifications from the moment it is entered.

    ``queue``: name a durable queue that survives a broker restart (see above);
    by default the queue is private and the watcher does not survive one.
    """

    def __init__(self, conf: cfg.ConfigOpts, topic: str = rpc.NOTIFICATION_TOPIC,
                 queue: Optional[str] = None) -> None:
        self._url = broker_url(conf)
        self._ssl = ssl_options(conf)
        rabbit = conf.oslo_messaging_rabbit
        # as oslo.messaging declares it, or the declaration is refused
        # (PRECONDITION_FAILED): quorum queues make its exchanges durable
        self._exchange = kombu.Exchange(
            conf.control_exchange, type='topic',
            durable=rabbit.amqp_durable_queues or rabbit.rabbit_quorum_queue,
            auto_delete=rabbit.amqp_auto_delete)
        #: a named queue on a cluster with quorum queues is one too: a classic one
        #: lives on one node and cannot be declared while that node is down
        self._quorum = rabbit.rabbit_quorum_queue
        self._topic = topic
        self._queue_name = queue
        self._connection: Any = None
        self._received: list = []
        #: Bodies exactly as they came off the wire, for tests that scan them.
        self.raw: list = []
        #: How often the connection was lost and made again (named queue only).
        self.reconnects = 0

    def __enter__(self) -> 'OutcomeWatcher':
        bindings = [kombu.binding(self._exchange, routing_key='%s.%s' % (self._topic, p))
                    for p in PRIORITIES]
        if self._queue_name:
            self._queue = kombu.Queue(
                self._queue_name, bindings=bindings, durable=True, auto_delete=False,
                exclusive=False, expires=QUEUE_EXPIRES,
                queue_arguments={'x-queue-type': 'quorum'} if self._quorum else None)
        else:
            self._queue = kombu.Queue(
                'attachworker-watch-%s-%d' % (socket.gethostname(), time.monotonic_ns()),
                bindings=bindings, exclusive=True, auto_delete=True, durable=False)
        self._connect()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            if self._queue_name:
                if self._connection is None:
                    self._connect()
                self._queue.delete()
        except self._lost:
            pass  # the broker expires it (QUEUE_EXPIRES)
        finally:
            self._disconnect()

    def _connect(self) -> None:
        self._connection = kombu.Connection(self._url, connect_timeout=5, ssl=self._ssl,
                                            failover_strategy='round-robin')
        #: What a lost or refused connection raises (kombu wraps some of it).
        self._lost = (kombu.exceptions.OperationalError,
                      *self._connection.connection_errors)
        try:
            channel = self._connection.channel()
            self._queue = self._queue(channel)  # declared on consume()
            kombu.Consumer(channel, queues=[self._queue], callbacks=[self._on_message],
                           accept=['json']).consume()
        except BaseException:
            self._disconnect()
            raise

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.release()
            self._connection = None

    def _drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for messages; False when none came.

        With a named queue, a lost connection (or a failed attempt to make it
        again) counts as nothing having come; the next call reconnects.
        """
        try:
            if self._connection is None:
                self._connect()
                self.reconnects += 1
            self._connection.drain_events(timeout=timeout)
            return True
        except socket.timeout:
            return False
        except self._lost:
            if not self._queue_name:
                raise
            self._disconnect()
            time.sleep(min(timeout, 1.0))
            return False

    def _on_message(self, body: Any, message: Any) -> None:
        self.raw.append(message.body)
        try:
            self._received.append(decode(body))
        except ValueError:
            pass  # not a notification of ours: a watcher ignores it
        message.ack()

    def wait(self, request_id: str, timeout: float,
             on_event: Optional[Callable[[dict], None]] = None) -> Optional[dict]:
        """The ``.end``/``.error`` of ``request_id``, or None after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for note in self._received[seen:]:
                seen += 1
                if request_id_of(note) != request_id:
                    continue
                if on_event:
                    on_event(note)
                if note.get('event_type', '').endswith(('.end', '.error')):
                    return note
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._drain(min(left, 1.0))

    def events(self, request_id: Optional[str] = None) -> list:
        """Everything received so far (for ``request_id`` only, when given)."""
        while self._drain(0.2):
            pass
        return [n for n in self._received
                if request_id is None or request_id_of(n) == request_id]

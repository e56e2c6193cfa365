"""Watching for the outcome notification of one request (``attachworker-cast --wait``).

An oslo.messaging notification listener needs a named pool queue that outlives the
process and keeps filling up after it exits; a one-shot watcher must leave nothing
behind. So this adapter owns kombu (the library under oslo.messaging's rabbit
driver) and binds a private, exclusive, auto-deleted queue to the notification
routing keys of the exchange. It speaks only to AMQP brokers, as the rabbit driver.
"""
import json
import socket
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


def broker_url(conf: cfg.ConfigOpts) -> str:
    """The kombu URL of the first broker of ``[DEFAULT] transport_url``."""
    url = messaging.TransportURL.parse(conf, conf.transport_url)
    if not url.hosts:
        return 'amqp://guest:guest@127.0.0.1:5672//'
    host = url.hosts[0]
    auth = ''
    if host.username:
        auth = parse.quote(host.username, safe='')
        if host.password:
            auth += ':' + parse.quote(host.password, safe='')
        auth += '@'
    vhost = parse.quote(url.virtual_host or '/', safe='')
    return 'amqp://%s%s:%s/%s' % (auth, host.hostname, host.port or 5672, vhost)


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
    """Collects attachworker notifications from the moment it is entered."""

    def __init__(self, conf: cfg.ConfigOpts, topic: str = rpc.NOTIFICATION_TOPIC) -> None:
        self._url = broker_url(conf)
        self._exchange = kombu.Exchange(
            conf.control_exchange, type='topic',
            durable=conf.oslo_messaging_rabbit.amqp_durable_queues,
            auto_delete=conf.oslo_messaging_rabbit.amqp_auto_delete)
        self._topic = topic
        self._received: list = []
        #: Bodies exactly as they came off the wire, for tests that scan them.
        self.raw: list = []

    def __enter__(self) -> 'OutcomeWatcher':
        self._connection = kombu.Connection(self._url, connect_timeout=5)
        self._channel = self._connection.channel()
        bindings = [kombu.binding(self._exchange, routing_key='%s.%s' % (self._topic, p))
                    for p in PRIORITIES]
        queue = kombu.Queue('attachworker-watch-%s-%d' % (socket.gethostname(),
                                                          time.monotonic_ns()),
                            bindings=bindings, exclusive=True, auto_delete=True,
                            durable=False)
        self._consumer = kombu.Consumer(self._channel, queues=[queue],
                                        callbacks=[self._on_message], accept=['json'])
        self._consumer.consume()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._connection.release()

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
            try:
                self._connection.drain_events(timeout=min(left, 1.0))
            except socket.timeout:
                pass

    def events(self, request_id: Optional[str] = None) -> list:
        """Everything received so far (for ``request_id`` only, when given)."""
        try:
            while True:
                self._connection.drain_events(timeout=0.2)
        except socket.timeout:
            pass
        return [n for n in self._received
                if request_id is None or request_id_of(n) == request_id]

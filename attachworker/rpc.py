"""oslo.messaging plumbing shared by every attachworker process.

Delivery semantics, decided here and nowhere else:

* RPC casts to the compute worker are acknowledged once the journal has them
  (attachworker.worker.delivery): a cast is delivered at least once, and a delivery the
  journal already knows is dropped, so each cast runs once.
* RPC calls are acknowledged on arrival, as oslo.messaging does: at most once.
* Notifications are acknowledged by listeners *after* the handler returns, so they
  arrive at least once; consumers de-duplicate on ``message_id``.
"""
import threading
from typing import Any

from oslo_config import cfg
from oslo_log import log as logging
import oslo_messaging as messaging
from oslo_messaging import server as messaging_server
from oslo_messaging._drivers import impl_rabbit
from oslo_messaging.rpc import dispatcher as rpc_dispatcher
from oslo_messaging.rpc import server as rpc_server

from attachworker import context as aw_context
from attachworker import exception
from attachworker import validation
from attachworker.worker import delivery

LOG = logging.getLogger(__name__)

TOPIC = 'compute'
NOTIFICATION_TOPIC = 'versioned_notifications'
DEFAULT_EXCHANGE = 'attachworker'
#: ``[oslo_messaging_rabbit] rabbit_qos_prefetch_count`` (oslo.messaging: 0, no
#: limit). Casts are acknowledged once journalled, so this is how many casts a
#: worker holds unacknowledged: as many as ``executor_thread_pool_size`` (64)
#: keeps every thread busy; more only holds casts that wait for a thread (a kill
#: returns them to the queue, where they are safe anyway) and their memory.
PREFETCH = 64
#: ``rabbit_quorum_delivery_limit`` (oslo.messaging: 0, no limit; RabbitMQ 4 applies
#: 20 itself), used only with ``rabbit_quorum_queue``. RabbitMQ 3.10 and 4 count a
#: delivery each time a message goes back to its queue: a requeue, or a consumer
#: connection lost before the ack. The worker acks a cast once journalled, so a cast is
#: counted only if the worker's connection or process dies between its delivery and
#: its journal write: once per node failure or crash at most (tests/cluster). 20
#: drops a cast that kills the worker before it is journalled after 20 crashes instead
#: of never, and keeps the meaning of RabbitMQ 4's default on 3.x. Changing it later
#: means deleting the queues (it is a queue argument); -1 is "no limit" on RabbitMQ 4
#: only: 3.10 drops the message at its first redelivery. The audit consumer's
#: requeues while its database is down count too (README, RabbitMQ cluster).
QUORUM_DELIVERY_LIMIT = 20
#: ``kombu_reconnect_delay`` (oslo.messaging: 1.0 s), slept before every reconnection
#: attempt. With oslo.messaging 18.3.1 and kombu 5.7 the RPC listener of a busy worker
#: whose node died needed 7-11 s to consume again with 1.0 (its attempts are cut short
#: by its own poll timeout, 1 ms after a message and doubling), 1-2.5 s with 0.1.
RECONNECT_DELAY = 0.1
#: What the sample config says of the two sizes, after the library's own help (the
#: figures behind them: README, "Figures", tools/bench-attach).
SIZING_HELP = {
    'executor_thread_pool_size': """
attachworker: a cast holds one thread for its whole pipeline, and most of
that time it waits: on Cinder (four requests per attach) and on the
journal's shared fsync. Throughput is at most threads / seconds per attach:
with Cinder answering every request in 50 ms an attach holds its thread
about 0.37 s (measured: 8 threads, 21 attaches/s), so 64 threads allow
about 170 attaches/s per process, more than one process's CPU reaches on
a 2-core machine (50-110/s with an instant Cinder stand-in, measured by
tools/bench-attach), so the pool does not bound it. Fewer threads do: 8
threads at 50 ms gave 21 attaches/s. More cost memory and lock contention
and only help when Cinder is slower: keep threads >= attaches/s wanted x
seconds per attach. The Cinder connection pool keeps one connection per
thread.""",
    'rabbit_qos_prefetch_count': """
attachworker: 64 (oslo.messaging: 0, no limit). Casts are acknowledged once
journalled, so this bounds the casts a worker holds unacknowledged: as many
as executor_thread_pool_size keeps every thread busy; more only holds casts
that wait for a thread, and their memory. Bounded, a backlog of 100,000
casts in the queue stays there, not in the worker (RSS: README, "Figures").
With [worker] workers = N the default becomes N times this.""",
}
RABBIT_DEFAULTS = {'rabbit_qos_prefetch_count': PREFETCH,
                   'rabbit_quorum_delivery_limit': QUORUM_DELIVERY_LIMIT,
                   'kombu_reconnect_delay': RECONNECT_DELAY}


def set_defaults(conf: cfg.ConfigOpts) -> None:
    """attachworker never shares Nova's exchange: default ``control_exchange``;
    the worker never pulls more casts than it has threads for; RABBIT_DEFAULTS."""
    messaging.set_transport_defaults(control_exchange=DEFAULT_EXCHANGE)
    for opt in impl_rabbit.rabbit_opts:
        if opt.dest in RABBIT_DEFAULTS:
            opt.default = RABBIT_DEFAULTS[opt.dest]
    for name, group, value in (('control_exchange', None, DEFAULT_EXCHANGE),
                               *((name, 'oslo_messaging_rabbit', value)
                                 for name, value in RABBIT_DEFAULTS.items())):
        try:  # already registered on this conf: change its default too
            conf.set_default(name, value, group=group)
        except (cfg.NoSuchOptError, cfg.NoSuchGroupError):
            pass


def document_sizing() -> None:
    """Append SIZING_HELP to the library options' help (for the sample config)."""
    for opt in (*rpc_server_opts(), *impl_rabbit.rabbit_opts):
        extra = SIZING_HELP.get(opt.dest)
        if extra and extra not in (opt.help or ''):
            opt.help = (opt.help or '').rstrip() + '\n' + extra


def rpc_server_opts() -> list:
    # oslo.messaging keeps executor_thread_pool_size in a private list (18.3.1)
    return list(getattr(messaging_server, '_pool_opts', ()))


def get_rpc_transport(conf: cfg.ConfigOpts) -> messaging.Transport:
    return messaging.get_rpc_transport(conf)


def get_notification_transport(conf: cfg.ConfigOpts) -> messaging.Transport:
    return messaging.get_notification_transport(conf)


class RequestContextSerializer(messaging.Serializer):
    """Carries our RequestContext across RPC, wrapping a payload serializer."""

    def __init__(self, base: messaging.Serializer | None = None) -> None:
        self._base = base or messaging.NoOpSerializer()

    def serialize_entity(self, ctxt: Any, entity: Any) -> Any:
        return self._base.serialize_entity(ctxt, entity)

    def deserialize_entity(self, ctxt: Any, entity: Any) -> Any:
        return self._base.deserialize_entity(ctxt, entity)

    def serialize_context(self, ctxt: aw_context.RequestContext) -> dict:
        return ctxt.to_dict()

    def deserialize_context(self, ctxt: Any) -> aw_context.RequestContext:
        """A context that cannot be trusted to be read is replaced by a fresh one
        carrying ``invalid`` (the reason): the cast still gets its ``.error``."""
        problem = validation.context_problem(ctxt)
        if problem is None:
            try:
                return aw_context.RequestContext.from_dict(ctxt)
            except Exception as exc:  # noqa: BLE001 - whatever oslo.context refuses
                problem = 'unreadable context: %s' % type(exc).__name__
        safe = aw_context.RequestContext(overwrite=False)
        safe.invalid = problem
        return safe


class NotificationContextSerializer(RequestContextSerializer):
    """What a notification carries of its context: ids only, never the token."""

    def serialize_context(self, ctxt: aw_context.RequestContext) -> dict:
        if isinstance(ctxt, aw_context.RequestContext):
            return ctxt.redacted()
        return {}


class Dispatcher(rpc_dispatcher.RPCDispatcher):
    """RPCDispatcher that gives undeliverable casts an outcome.

    Only the endpoint's ``RPC_METHODS`` are reachable: any other name (a helper
    of the manager, an attribute) is NoSuchMethod. oslo.messaging raises
    UnsupportedVersion/NoSuchMethod before any endpoint runs, and the server then
    logs a bare traceback. Here the failure is logged in one clear line and handed
    to ``on_reject(ctxt, method, exc)`` so the endpoint can publish the ``.error``
    the caller is waiting for. What an endpoint method raises is its own business:
    the endpoint has already published the outcome, and no second one is sent.
    """

    def __init__(self, endpoints: list, serializer: messaging.Serializer,
                 on_reject: Any) -> None:
        super().__init__(endpoints, serializer)
        self._on_reject = on_reject
        self._allowed = set()
        for endpoint in endpoints:
            self._allowed.update(getattr(endpoint, 'RPC_METHODS', ()))

    def dispatch(self, incoming: Any) -> Any:
        with delivery.delivering(incoming):
            return self._dispatch(incoming)

    def _dispatch(self, incoming: Any) -> Any:
        message = incoming.message if isinstance(incoming.message, dict) else {}
        method = message.get('method')
        is_call = _is_call(incoming)
        try:
            if not isinstance(method, str) or method not in self._allowed:
                raise rpc_dispatcher.NoSuchMethod(str(method)[:64])
            problem = validation.message_problem(message)
            if problem:
                raise exception.InvalidInput(reason='malformed RPC message: %s' % problem)
            return super().dispatch(incoming)
        except (rpc_dispatcher.NoSuchMethod, rpc_dispatcher.UnsupportedVersion,
                exception.InvalidInput) as exc:
            if is_call:  # the caller gets the error as a RemoteError
                LOG.warning('Refused RPC call %s: %s: %s', str(method)[:64],
                            type(exc).__name__, exc)
                raise
            self._reject(incoming, exc)
        except messaging.ExpectedException:
            raise  # a call's refusal: oslo.messaging replies with it
        except Exception:  # noqa: BLE001 - nothing may kill the server loop
            if is_call:
                raise
            LOG.exception('RPC method %s raised; its outcome was already published',
                          str(method)[:64])
        return None

    def _reject(self, incoming: Any, exc: Exception) -> None:
        try:
            message = incoming.message if isinstance(incoming.message, dict) else {}
            method = str(message.get('method'))[:64]
            version = str(message.get('version', '1.0'))[:16]
            LOG.error('Rejected RPC %(method)s version %(version)s: %(kind)s: %(exc)s',
                      {'method': method, 'version': version,
                       'kind': type(exc).__name__, 'exc': exc})
            ctxt = self.serializer.deserialize_context(incoming.ctxt)
            self._on_reject(ctxt, method, exc)
        except Exception:  # noqa: BLE001 - nothing may kill the server loop
            LOG.exception('Could not reject an RPC message')


def _is_call(incoming: Any) -> bool:
    """Does the sender wait for an answer? (oslo.messaging gives every incoming
    message a msg_id; the drivers keep what the sender sent.)"""
    if hasattr(incoming, 'orig_msg_id'):  # rabbit
        return bool(incoming.orig_msg_id)
    return bool(getattr(incoming, '_reply_q', None))  # fake://


class ComputeRPCServer(rpc_server.RPCServer):
    """An RPCServer whose casts are acknowledged once journalled.

    ``route(incoming)`` (``[worker] workers`` > 1): casts go to it instead of the
    thread pool, on the listener's poll thread, so in the order they were delivered
    (attachworker.worker.workers); calls still run here, in the pool.
    """

    def __init__(self, *args: Any, known_cast: Any = None, route: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._known_cast = known_cast
        self._route = route

    def _on_incoming(self, incoming: Any) -> None:
        if self._route is None or _is_call(incoming[0]):
            return super()._on_incoming(incoming)
        for message in incoming:
            try:
                self._route(message)
            except Exception:  # noqa: BLE001 - the poll thread must go on
                LOG.exception('Could not hand a cast to a worker process; it stays '
                              'unacknowledged, for the broker to deliver again')

    def _create_listener(self) -> Any:
        listener = super()._create_listener()
        if self._known_cast is not None:
            delivery.install(listener, self._known_cast)
        return listener


def get_dispatcher(endpoint: Any, on_reject: Any) -> Dispatcher:
    return Dispatcher([endpoint], RequestContextSerializer(), on_reject)


def get_rpc_server(transport: messaging.Transport, host: str, endpoint: Any,
                   on_reject: Any, known_cast: Any = None,
                   route: Any = None) -> messaging.MessageHandlingServer:
    """An RPC server on topic ``compute``, server ``host``, threading executor.

    ``known_cast(unique_id)`` says whether the journal has a cast: with it, casts
    are acknowledged once journalled (attachworker.worker.delivery). ``route``:
    casts are handed to it (ComputeRPCServer).
    """
    target = messaging.Target(topic=TOPIC, server=host)
    return ComputeRPCServer(transport, target, get_dispatcher(endpoint, on_reject),
                            executor='threading', known_cast=known_cast, route=route)


def brokers(conf: cfg.ConfigOpts) -> str:
    """``host:port`` of every broker of ``[DEFAULT] transport_url``: never a password."""
    try:
        url = messaging.TransportURL.parse(conf, conf.transport_url)
    except Exception:  # noqa: BLE001 - a URL oslo.messaging cannot parse fails elsewhere
        return '(unparsable transport_url)'
    if not url.hosts:
        return '127.0.0.1:5672 (the default)'
    return ', '.join('%s:%s' % (host.hostname, host.port or 5672) for host in url.hosts)


#: Seconds between two "still cannot reach the broker" lines while starting.
STARTING_REPORT_EVERY = 10


def start_server(server: Any, stop: Any, conf: cfg.ConfigOpts, what: str) -> bool:
    """Start an oslo.messaging server without ever becoming deaf to SIGTERM.

    oslo.messaging connects in ``start()`` and retries a broker it cannot reach
    forever, logging a "Connection failed" that never names the broker. Here
    ``start()`` runs in a thread; this one names the broker and the back-off every
    few seconds, and returns False at once when ``stop`` (set by the signal
    handler) comes first: the caller then exits without waiting for the thread.
    """
    done = threading.Event()
    failed: list = []

    def run() -> None:
        try:
            server.start()
        except Exception as exc:  # noqa: BLE001 - reported by the caller's thread
            failed.append(exc)
        done.set()
    threading.Thread(target=run, name='%s-start' % what, daemon=True).start()
    rabbit = conf.oslo_messaging_rabbit
    waited = 0.0
    LOG.info('%s: connecting to the message broker at %s', what, brokers(conf))
    while not done.wait(0.2):
        if stop.is_set():
            LOG.info('%s: stopping before the message broker at %s could be reached',
                     what, brokers(conf))
            return False
        waited += 0.2
        if waited >= STARTING_REPORT_EVERY:
            waited = 0.0
            LOG.warning('%(what)s: still cannot reach the message broker at %(brokers)s; '
                        'retrying every %(interval)s s, backing off by %(backoff)s s to '
                        '%(max)s s', {'what': what, 'brokers': brokers(conf),
                                      'interval': rabbit.rabbit_retry_interval,
                                      'backoff': rabbit.rabbit_retry_backoff,
                                      'max': rabbit.rabbit_interval_max})
    if failed:
        raise failed[0]
    return True

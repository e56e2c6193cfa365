"""oslo.messaging plumbing shared by every attachworker process.

Delivery semantics, decided here and nowhere else:

* RPC casts are acknowledged by oslo.messaging *before* dispatch, so a cast arrives
  at most once; the compute worker's journal covers the window after the ack.
* Notifications are acknowledged by listeners *after* the handler returns, so they
  arrive at least once; consumers de-duplicate on ``message_id``.
"""
from typing import Any

from oslo_config import cfg
from oslo_log import log as logging
import oslo_messaging as messaging
from oslo_messaging.rpc import dispatcher as rpc_dispatcher
from oslo_messaging.rpc import server as rpc_server

from attachworker import context as aw_context

LOG = logging.getLogger(__name__)

TOPIC = 'compute'
NOTIFICATION_TOPIC = 'versioned_notifications'
DEFAULT_EXCHANGE = 'attachworker'


def set_defaults(conf: cfg.ConfigOpts) -> None:
    """attachworker never shares Nova's exchange: default ``control_exchange``."""
    messaging.set_transport_defaults(control_exchange=DEFAULT_EXCHANGE)
    try:  # already registered on this conf: change its default too
        conf.set_default('control_exchange', DEFAULT_EXCHANGE)
    except cfg.NoSuchOptError:
        pass


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

    def deserialize_context(self, ctxt: dict) -> aw_context.RequestContext:
        return aw_context.RequestContext.from_dict(ctxt)


class NotificationContextSerializer(RequestContextSerializer):
    """What a notification carries of its context: ids only, never the token."""

    def serialize_context(self, ctxt: aw_context.RequestContext) -> dict:
        if isinstance(ctxt, aw_context.RequestContext):
            return ctxt.redacted()
        return {}


class Dispatcher(rpc_dispatcher.RPCDispatcher):
    """RPCDispatcher that gives undeliverable casts an outcome.

    oslo.messaging raises UnsupportedVersion/NoSuchMethod (or a serializer error)
    before any endpoint runs, and the server then logs a bare traceback. Here the
    failure is logged in one clear line and handed to ``on_reject(ctxt, method,
    exc)`` so the endpoint can publish the ``.error`` the caller is waiting for.
    """

    def __init__(self, endpoints: list, serializer: messaging.Serializer,
                 on_reject: Any) -> None:
        super().__init__(endpoints, serializer)
        self._on_reject = on_reject

    def dispatch(self, incoming: Any) -> Any:
        try:
            return super().dispatch(incoming)
        except Exception as exc:  # noqa: BLE001 - nothing may kill the server loop
            message = incoming.message if isinstance(incoming.message, dict) else {}
            method = str(message.get('method'))[:64]
            version = str(message.get('version', '1.0'))[:16]
            LOG.error('Rejected RPC %(method)s version %(version)s: %(kind)s: %(exc)s',
                      {'method': method, 'version': version,
                       'kind': type(exc).__name__, 'exc': exc})
            try:
                ctxt = aw_context.RequestContext.from_dict(incoming.ctxt)
            except Exception:  # noqa: BLE001 - a malformed context still gets an answer
                ctxt = aw_context.get_admin_context()
            self._on_reject(ctxt, method, exc)
            return None


def get_rpc_server(transport: messaging.Transport, host: str, endpoint: Any,
                   on_reject: Any) -> messaging.MessageHandlingServer:
    """An RPC server on topic ``compute``, server ``host``, threading executor."""
    target = messaging.Target(topic=TOPIC, server=host)
    dispatcher = Dispatcher([endpoint], RequestContextSerializer(), on_reject)
    return rpc_server.RPCServer(transport, target, dispatcher, executor='threading')

"""oslo.messaging plumbing shared by every attachworker process.

Delivery semantics, decided here and nowhere else:

* RPC casts are acknowledged by oslo.messaging *before* dispatch, so a cast arrives
  at most once; the compute worker's journal covers the window after the ack.
* Notifications are acknowledged by listeners *after* the handler returns, so they
  arrive at least once; consumers de-duplicate on ``message_id``.
"""
from typing import Any

import oslo_messaging as messaging
from oslo_config import cfg

from attachworker import context as aw_context

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

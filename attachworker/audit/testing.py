"""Builders and a publisher for contract notifications, for tests and benchmarks.

``payload()`` gives the oslo.versionedobjects primitive the compute worker
sends; ``Publisher`` sends it through a real oslo.messaging ``Notifier``
(driver ``messagingv2``, topic ``versioned_notifications``), or, with
``send()``, sends a message dict as-is through the same driver, for what a
Notifier will not produce: a chosen ``message_id`` (duplicates), a broken
payload, or a context carrying what it must not (an upstream bug).
"""
import copy
from typing import Any
from typing import Optional
import uuid

import oslo_messaging as messaging
from oslo_messaging.notify import messaging as notify_messaging
from oslo_utils import timeutils

from attachworker import context as aw_context
from attachworker import rpc
from attachworker.audit.contract import PAYLOAD_NAMES
from attachworker.audit.contract import PREFIX

PHASES = ('start', 'end', 'error')


def event_type(action: str, phase: str) -> str:
    return f'instance.volume_{action}.{phase}'


def priority(phase: str) -> str:
    return 'ERROR' if phase == 'error' else 'INFO'


def fault(exception: str = 'CinderUnavailable', message: str = 'Cinder is unavailable',
          step: str = 'attachment_update', code: int = 503) -> dict:
    return {'exception': exception, 'message': message, 'step': step, 'code': code}


def payload(action: str = 'attach', phase: str = 'start', version: str = '1.0',
            **data: Any) -> dict:
    """The versioned payload of one event; ``data`` overrides fields."""
    values = {
        'request_id': 'req-' + str(uuid.uuid4()), 'instance_uuid': str(uuid.uuid4()),
        'project_id': uuid.uuid4().hex, 'user_id': uuid.uuid4().hex,
        'volume_id': str(uuid.uuid4()), 'attachment_id': str(uuid.uuid4()),
        'mountpoint': '/dev/vdb', 'mode': 'rw', 'host': 'compute-1',
        'flow': 'attachments', 'driver_volume_type': 'iscsi',
        'duration_ms': None if phase == 'start' else 412,
        'fault': fault() if phase == 'error' else None,
    }
    values.update(data)
    return {PREFIX + 'name': PAYLOAD_NAMES[action], PREFIX + 'namespace': 'attachworker',
            PREFIX + 'version': version, PREFIX + 'data': values}


def message(action: str, phase: str, event_payload: dict, *, host: str = 'compute-1',
            message_id: Optional[str] = None, timestamp: Optional[str] = None) -> dict:
    """The message dict oslo.messaging's Notifier builds around a payload."""
    return {'message_id': message_id or str(uuid.uuid4()),
            'publisher_id': f'attachworker-compute:{host}',
            'event_type': event_type(action, phase), 'priority': priority(phase),
            'payload': event_payload,
            'timestamp': timestamp or str(timeutils.utcnow())}


def context_for(event_payload: dict) -> aw_context.RequestContext:
    data = event_payload[PREFIX + 'data']
    return aw_context.RequestContext(request_id=data['request_id'],
                                     user_id=data.get('user_id'),
                                     project_id=data.get('project_id'), overwrite=False)


class Publisher:
    """Publishes notifications the way the compute worker does."""

    def __init__(self, transport: messaging.Transport, host: str = 'compute-1') -> None:
        self.host = host
        self.notifier = messaging.Notifier(
            transport, publisher_id=f'attachworker-compute:{host}', driver='messagingv2',
            topics=[rpc.NOTIFICATION_TOPIC],
            serializer=rpc.NotificationContextSerializer())
        self._driver = notify_messaging.MessagingV2Driver(
            transport.conf, topics=[rpc.NOTIFICATION_TOPIC], transport=transport)

    def notify(self, action: str, phase: str, event_payload: dict) -> None:
        """Through the Notifier: new message_id and timestamp, redacted context."""
        method = getattr(self.notifier, priority(phase).lower())
        method(context_for(event_payload), event_type(action, phase), event_payload)

    def send(self, msg: dict, ctxt: Optional[dict] = None) -> None:
        """Through the Notifier's driver, exactly as given (message_id included).

        ``ctxt`` keys become ``_context_<key>``; by default the four the
        worker's notifications carry.
        """
        if ctxt is None:
            data = (msg.get('payload') or {}).get(PREFIX + 'data') or {}
            ctxt = {'request_id': data.get('request_id'), 'global_request_id': None,
                    'user_id': data.get('user_id'), 'project_id': data.get('project_id')}
        self._driver.notify(dict(ctxt), copy.deepcopy(msg), str(msg.get('priority')),
                            retry=-1)

"""Publishing the outcome of every operation as versioned notifications.

Event types ``instance.volume_attach.start|end|error`` (and ``volume_detach``,
``volume_extend``, ``volume_refresh``),
priority INFO (ERROR for ``.error``), driver ``messagingv2`` (through
attachworker.notifications.driver, which says when publishing failed), topic
``versioned_notifications`` on the ``control_exchange``,
``publisher_id = attachworker-compute:<host>``.

An observer never breaks the work: a failure to publish is logged and reported to
the caller as ``False``; it never raises.
"""
from typing import Any
from typing import Optional

from oslo_log import log as logging
import oslo_messaging as messaging

from attachworker import rpc
from attachworker.notifications import driver as reporting
from attachworker.notifications.payload import make_payload

LOG = logging.getLogger(__name__)

#: How often the rabbit driver retries a publish before giving up (0 = once).
#: Kept small: a dead broker must not hold an attach thread for minutes.
PUBLISH_RETRY = 2


class Notifier:
    """Publishes attachworker's notifications; never raises."""

    def __init__(self, transport: messaging.Transport, host: str,
                 publisher: str = 'attachworker-compute',
                 retry: int = PUBLISH_RETRY, driver: str = 'attachworker') -> None:
        self.host = host
        self.publisher_id = '%s:%s' % (publisher, host)
        self._notifier = messaging.Notifier(
            transport, publisher_id=self.publisher_id, driver=driver,
            topics=[rpc.NOTIFICATION_TOPIC],
            serializer=rpc.NotificationContextSerializer(), retry=retry)

    def notify(self, ctxt: Any, action: str, phase: str, fault: Optional[dict] = None,
               event: Optional[tuple] = None, **values: Any) -> bool:
        """Publish ``instance.<action>.<phase>``; True when the broker took it.

        ``event`` is ``(message_id, created_at epoch)``: a notification published
        again (the outbox after a crash) keeps its identity and its timestamp.
        """
        event_type = 'instance.%s.%s' % (action, phase)
        values.setdefault('host', self.host)
        reporting.outcome.event = event
        reporting.outcome.poison = False
        try:
            try:
                payload = make_payload(action, fault=fault, **values).to_primitive()
            except Exception:
                reporting.outcome.poison = True
                raise
            reporting.outcome.last_error = None
            if phase == 'error':
                self._notifier.error(ctxt, event_type, payload)
            else:
                self._notifier.info(ctxt, event_type, payload)
            if reporting.outcome.last_error is not None:
                raise reporting.outcome.last_error
        except Exception as exc:  # noqa: BLE001 - an observer never breaks the work
            LOG.error('Could not publish %(event)s for volume %(volume)s: %(exc)s',
                      {'event': event_type, 'volume': values.get('volume_id'),
                       'exc': exc})
            return False
        finally:
            reporting.outcome.event = None
        LOG.debug('Published %s', event_type)
        return True

    @staticmethod
    def last_failure_is_poison() -> bool:
        """Did this thread's last notify fail for a reason of its own, not the broker's?"""
        return bool(getattr(reporting.outcome, 'poison', False))

    @staticmethod
    def last_failure() -> str:
        error = getattr(reporting.outcome, 'last_error', None)
        return '%s: %s' % (type(error).__name__, error) if error else 'payload refused'

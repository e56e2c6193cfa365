"""A ``messagingv2`` notification driver that reports whether the broker took it.

oslo.messaging's Notifier logs and swallows every publishing error, in its driver
and again around it, so its caller cannot tell a sent notification from a lost
one. The outbox must know, to keep what was not sent. This driver publishes
exactly as ``messagingv2`` does (same envelope, topics ``<topic>.<priority>``) and
records the outcome of the last publish in a thread-local for
attachworker.notifications.Notifier to read; it raises nothing, so oslo.messaging
logs nothing twice. Remove once oslo.messaging's Notifier reports failures.
"""
import datetime
import threading
from typing import Any

import oslo_messaging as messaging
from oslo_messaging.notify import messaging as notify_messaging

#: ``last_error`` is the exception of this thread's last publish, None when it went out;
#: ``poison`` says it failed for a reason of the message's own (it cannot be
#: encoded), not the broker's. ``event`` (set by the caller) is the
#: ``(message_id, created_at)`` to publish under.
outcome = threading.local()
#: Errors of the message itself, not of the broker.
POISON = (TypeError, ValueError, UnicodeError, OverflowError, RecursionError)


class ReportingDriver(notify_messaging.MessagingV2Driver):
    def notify(self, ctxt: Any, message: dict, priority: str, retry: Any) -> None:
        outcome.last_error = None
        event = getattr(outcome, 'event', None)
        if event:
            message = dict(message, message_id=event[0], timestamp=str(
                datetime.datetime.fromtimestamp(event[1], datetime.timezone.utc)
                .replace(tzinfo=None)))
        try:
            for topic in self.topics:
                target = messaging.Target(topic='%s.%s' % (topic, priority.lower()))
                self.transport._send_notification(target, ctxt, message,
                                                  version=self.version, retry=retry)
        except Exception as exc:  # noqa: BLE001 - reported to the caller, not raised
            outcome.last_error = exc
            outcome.poison = isinstance(exc, POISON)

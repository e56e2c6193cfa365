"""The endpoint decides each message's fate: stored, duplicate, rejected or requeued."""
import json
import logging as logging_std
import time

from oslo_context import context as o_context
import oslo_messaging as messaging

from attachworker.audit import backoff
from attachworker.audit import consumer
from attachworker.audit import models
from tests.unit.audit.helpers import count
from tests.unit.audit.helpers import notification
from tests.unit.audit.helpers import rows

HANDLED = messaging.NotificationResult.HANDLED
REQUEUE = messaging.NotificationResult.REQUEUE


def test_a_notification_is_acked_once_stored(endpoint, engine):
    assert endpoint.handle(*notification('attach', 'start', request_id='req-1')) == HANDLED
    assert [e['request_id'] for e in rows(engine, models.events)] == ['req-1']
    assert endpoint.counts['stored'] == 1


def test_a_duplicate_is_acked_and_not_stored_twice(endpoint, engine):
    ctxt, msg = notification('attach', 'end')
    assert endpoint.handle(ctxt, msg) == HANDLED
    assert endpoint.handle(ctxt, dict(msg)) == HANDLED
    assert count(engine, models.events) == 1
    assert endpoint.counts == {'stored': 1, 'duplicate': 1, 'rejected': 0, 'requeued': 0}


def test_a_malformed_notification_is_kept_as_rejected_and_acked(endpoint, engine):
    ctxt, msg = notification('attach', 'start')
    msg['payload']['attachworker_object.version'] = '2.0'
    msg['payload']['attachworker_object.data']['auth_token'] = 'tok-never-stored'
    assert endpoint.handle(ctxt, msg) == HANDLED
    assert count(engine, models.events) == 0
    [rejected] = rows(engine, models.rejected)
    assert rejected['message_id'] == msg['message_id']
    assert rejected['event_type'] == 'instance.volume_attach.start'
    assert "version '2.0' is not 1.x" in rejected['reason']
    assert 'tok-never-stored' not in rejected['excerpt']
    assert json.loads(rejected['excerpt'])['message']['priority'] == 'INFO'
    assert 'msg_id' not in json.loads(rejected['excerpt'])['context']


def test_a_long_rejected_message_keeps_a_truncated_excerpt(endpoint, engine):
    ctxt, msg = notification('attach', 'start')
    msg['event_type'] = 'x' * 10000
    endpoint.handle(ctxt, msg)
    [rejected] = rows(engine, models.rejected)
    assert len(rejected['excerpt']) == 4096
    assert rejected['size'] > 10000


def test_a_database_error_requeues_after_a_growing_pause(endpoint, engine, lock_database):
    conn = lock_database()
    pauses = []
    for _ in range(3):
        began = time.monotonic()
        assert endpoint.handle(*notification('attach', 'start')) == REQUEUE
        pauses.append(time.monotonic() - began)
    # each try waits the lock's busy timeout (0.2 s) plus the back-off: 0.05, 0.1, 0.2
    assert pauses[0] < pauses[2]
    assert pauses[2] >= 0.2 + 0.2
    conn.execute('ROLLBACK')
    assert endpoint.handle(*notification('attach', 'start')) == HANDLED
    assert endpoint.counts['requeued'] == 3
    began = time.monotonic()  # the success reset the pause to its start
    conn = lock_database()
    assert endpoint.handle(*notification('attach', 'start')) == REQUEUE
    assert time.monotonic() - began < pauses[2]


def test_backoff_doubles_up_to_its_maximum_and_resets():
    pause = backoff.Backoff(0.1, 0.5)
    assert [pause.failed() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    pause.succeeded()
    assert pause.failed() == 0.1


def test_rejecting_while_the_database_is_down_requeues(endpoint, engine, lock_database):
    lock_database()
    assert endpoint.handle({}, {'not': 'ours'}) == REQUEUE
    assert endpoint.counts['rejected'] == 0


def test_stop_cuts_a_back_off_short(audit_store, lock_database):
    endpoint = consumer.AuditEndpoint(audit_store, max_message_size=65536,
                                      excerpt_length=64,
                                      backoff=backoff.Backoff(30, 30))
    lock_database()
    endpoint.stop()
    began = time.monotonic()
    assert endpoint.handle(*notification('attach', 'start')) == REQUEUE
    assert time.monotonic() - began < 5


class _Records(logging_std.Handler):
    def __init__(self):
        super().__init__(logging_std.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_log_lines_carry_the_request_id_and_no_later_line_inherits_it(endpoint):
    handler = _Records()
    logger = logging_std.getLogger('attachworker.audit.consumer')
    logger.addHandler(handler)
    logger.setLevel(logging_std.DEBUG)
    try:
        endpoint.handle(*notification('attach', 'start', request_id='req-logged'))
    finally:
        logger.removeHandler(handler)
    assert [r.context.request_id for r in handler.records] == ['req-logged']
    assert o_context.get_current() is None

"""The endpoint decides each message's fate: stored, duplicate, rejected, held or requeued."""
import datetime
import json
import logging as logging_std
import threading
import time

from oslo_context import context as o_context
import oslo_messaging as messaging
import pytest
from sqlalchemy import exc as sa_exc

from attachworker import exception
from attachworker.audit import backoff
from attachworker.audit import consumer
from attachworker.audit import contract
from attachworker.audit import models
from attachworker.audit import store as store_module
from tests.unit.audit.helpers import T0
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


class Flaky:
    """A store whose writes fail as an outage would, ``failures`` times, then work."""

    def __init__(self, real, failures):
        self.real, self.failures, self.calls = real, failures, 0

    def _maybe_fail(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise exception.AuditStoreUnavailable(reason='down')

    def record_events(self, events):
        self._maybe_fail()
        return self.real.record_events(events)

    def record_rejected(self, **row):
        self._maybe_fail()
        return self.real.record_rejected(**row)


def held_endpoint(audit_store, failures, waits):
    endpoint = consumer.AuditEndpoint(Flaky(audit_store, failures),
                                      max_message_size=65536, excerpt_length=64,
                                      backoff=backoff.Backoff(0.05, 0.2))
    stopping = endpoint._stopping

    def wait(delay):  # record the back-off instead of sleeping it
        waits.append(delay)
        return stopping.is_set()
    endpoint._stopping = type('Stopping', (), {'wait': staticmethod(wait),
                                               'set': stopping.set,
                                               'is_set': stopping.is_set})()
    return endpoint


def test_an_outage_holds_the_batch_and_stores_it_once_back(audit_store, engine):
    waits = []
    endpoint = held_endpoint(audit_store, 5, waits)
    batch = [notification('attach', 'start') for _ in range(3)]
    assert endpoint.handle_batch(batch) == [HANDLED] * 3
    assert waits == [0.05, 0.1, 0.2, 0.2, 0.2]  # the back-off, up to its maximum
    assert count(engine, models.events) == 3
    assert endpoint.counts == {'stored': 3, 'duplicate': 0, 'rejected': 0, 'requeued': 0}
    assert endpoint.held == 3
    waits.clear()  # the success reset the back-off
    endpoint._store.failures = endpoint._store.calls + 1
    assert endpoint.handle(*notification('attach', 'end')) == HANDLED
    assert waits == [0.05]


def test_a_message_rejected_during_an_outage_is_held_then_kept(audit_store, engine):
    waits = []
    endpoint = held_endpoint(audit_store, 2, waits)
    assert endpoint.handle({}, {'not': 'ours'}) == HANDLED
    assert (waits, count(engine, models.rejected)) == ([0.05, 0.1], 1)
    assert endpoint.counts['rejected'] == 1 and endpoint.counts['requeued'] == 0


def test_stopping_during_an_outage_requeues_the_held_batch_once(audit_store, engine):
    endpoint = consumer.AuditEndpoint(Flaky(audit_store, 10 ** 6),
                                      max_message_size=65536, excerpt_length=64,
                                      backoff=backoff.Backoff(30, 30))
    fates = []
    handler = threading.Thread(target=lambda: fates.extend(endpoint.handle_batch(
        [notification('attach', 'start') for _ in range(2)])))
    handler.start()
    deadline = time.monotonic() + 5
    while not endpoint.held and time.monotonic() < deadline:
        time.sleep(0.01)
    assert endpoint.drain(0.1) == 2  # held: still in flight, neither acked nor requeued
    began = time.monotonic()
    endpoint.stop()
    handler.join(5)
    assert time.monotonic() - began < 2
    assert fates == [REQUEUE] * 2
    assert endpoint.counts['requeued'] == 2 and endpoint._store.calls == 1
    assert count(engine, models.events) == 0


def test_a_locked_database_is_waited_out(endpoint, engine, lock_database):
    conn = lock_database()
    fates = []
    handler = threading.Thread(target=lambda: fates.append(
        endpoint.handle(*notification('attach', 'start'))))
    handler.start()
    time.sleep(1)
    assert fates == [] and endpoint.held == 1
    conn.execute('ROLLBACK')
    handler.join(5)
    assert fates == [HANDLED] and count(engine, models.events) == 1
    assert endpoint.counts['requeued'] == 0


def test_backoff_doubles_up_to_its_maximum_and_resets():
    pause = backoff.Backoff(0.1, 0.5)
    assert [pause.failed() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    pause.succeeded()
    assert pause.failed() == 0.1


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


# --- a poison message is rejected alone; its batch is stored ------------------------

def _with_surrogate(place):
    ctxt, msg = notification('attach', 'start')
    target = {'payload': msg['payload']['attachworker_object.data'], 'message': msg,
              'context': ctxt}[place.split('.')[0]]
    target[place.split('.')[1]] = 'bad-\ud800-text'
    return ctxt, msg


SURROGATE_PLACES = ['payload.host', 'payload.new_field', 'message.event_type',
                    'message.publisher_id', 'message.message_id', 'context.user_id']


def test_text_with_a_lone_surrogate_is_rejected_and_its_batch_stored(endpoint, engine):
    good = [notification('attach', 'start') for _ in range(3)]
    bad = [_with_surrogate(place) for place in SURROGATE_PLACES]
    batch = [good[0], *bad[:3], good[1], *bad[3:], good[2]]
    assert endpoint.handle_batch(batch) == [HANDLED] * len(batch)
    assert endpoint.counts == {'stored': 3, 'duplicate': 0, 'rejected': len(bad),
                               'requeued': 0}
    assert {e['message_id'] for e in rows(engine, models.events)} == {
        msg['message_id'] for _, msg in good}
    rejected = rows(engine, models.rejected)
    assert len(rejected) == len(bad)
    assert all('is not UTF-8 text: lone surrogate U+D800' in r['reason'] for r in rejected)
    # the offending text is kept, escaped
    assert {r['message_id'] for r in rejected} >= {'bad-\\ud800-text'}
    assert {r['event_type'] for r in rejected} >= {'bad-\\ud800-text'}
    assert {r['publisher_id'] for r in rejected} >= {'bad-\\ud800-text'}
    assert all('bad-\\ud800-text' in r['excerpt'] for r in rejected)  # as JSON escapes it
    # and a redelivery is known: acked, not a second row
    assert endpoint.handle_batch(bad[4:5]) == [HANDLED]
    assert count(engine, models.rejected) == len(bad)


def _poison(monkeypatch, error):
    """The store fails on request 'req-poison' with ``error``, as a bug or driver would."""
    real = store_module._operation_row

    def operation_row(event):
        if event.request_id == 'req-poison':
            raise error
        return real(event)
    monkeypatch.setattr(store_module, '_operation_row', operation_row)


POISON_ERRORS = {
    'TypeError': TypeError('unsupported operand'),
    'ValueError': ValueError('A string literal cannot contain NUL (0x00) characters.'),
    'DataError': sa_exc.DataError('INSERT', {}, Exception('value too long')),
    'IntegrityError': sa_exc.IntegrityError('INSERT', {}, Exception('NOT NULL')),
    'ProgrammingError': sa_exc.ProgrammingError('INSERT', {}, Exception("can't adapt")),
    'StatementError': sa_exc.StatementError('bad value', 'INSERT', {}, TypeError('x')),
}


@pytest.mark.parametrize('error', POISON_ERRORS.values(), ids=list(POISON_ERRORS))
def test_a_message_the_store_fails_on_is_rejected_alone(endpoint, engine, monkeypatch,
                                                        error):
    _poison(monkeypatch, error)
    batch = [notification('attach', 'start') for _ in range(2)]
    batch.insert(1, notification('attach', 'start', request_id='req-poison'))
    assert endpoint.handle_batch(batch) == [HANDLED] * 3
    assert endpoint.counts == {'stored': 2, 'duplicate': 0, 'rejected': 1, 'requeued': 0}
    assert count(engine, models.events) == 2
    [rejected] = rows(engine, models.rejected)
    assert rejected['message_id'] == batch[1][1]['message_id']
    assert rejected['reason'].startswith('Audit store refused the row')


def test_a_bug_reading_one_message_rejects_that_message_only(endpoint, engine,
                                                             monkeypatch):
    real = contract.parse

    def parse(ctxt, msg, *args):
        if msg['message_id'] == 'm-poison':
            raise KeyError('bug')
        return real(ctxt, msg, *args)
    monkeypatch.setattr(contract, 'parse', parse)
    batch = [notification('attach', 'start'), notification('attach', 'start',
                                                           message_id='m-poison')]
    assert endpoint.handle_batch(batch) == [HANDLED, HANDLED]
    assert count(engine, models.events) == 1
    [rejected] = rows(engine, models.rejected)
    assert rejected['reason'] == "audit consumer error: KeyError: 'bug'"


def test_a_message_too_deep_to_print_is_still_kept(endpoint, engine):
    deep = {}
    for _ in range(100_000):
        deep = {'x': deep}
    assert endpoint.reject('too deep', {'message': deep}) == HANDLED
    [rejected] = rows(engine, models.rejected)
    assert rejected['excerpt'] == '<dict: RecursionError>'


# --- a notification resent after a crash: same message_id, same payload -------------

def _resent(msg):
    """The copy the worker sends after a crash: same id and payload, later stamp."""
    return dict(msg, payload=json.loads(json.dumps(msg['payload'])),
                timestamp=str(T0 + datetime.timedelta(minutes=5)))


@pytest.mark.parametrize('batches', ['one batch', 'two batches'])
def test_a_resent_notification_is_stored_once(endpoint, engine, batches):
    ctxt, msg = notification('attach', 'end', request_id='req-resent', at=T0)
    copy = (dict(ctxt), _resent(msg))
    if batches == 'one batch':
        assert endpoint.handle_batch([(ctxt, msg), copy]) == [HANDLED, HANDLED]
    else:
        assert endpoint.handle_batch([(ctxt, msg)]) == [HANDLED]
        assert endpoint.handle_batch([copy]) == [HANDLED]
    assert endpoint.counts == {'stored': 1, 'duplicate': 1, 'rejected': 0, 'requeued': 0}
    [stored] = rows(engine, models.events)
    assert (stored['message_id'], stored['timestamp']) == (msg['message_id'], T0)
    [op] = rows(engine, models.operations)
    assert (op['request_id'], op['events_count'], op['ended_at']) == ('req-resent', 1, T0)

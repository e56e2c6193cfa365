"""A row the real database refuses, for whatever reason, is rejected alone.

Only an outage (no connection, a lost one, a locked or unavailable database)
requeues; a value a driver cannot adapt, text it cannot encode or PostgreSQL
refuses, a constraint, a bug: each is a refusal of that one message, which is kept
in ``rejected`` and acknowledged while the rest of its batch is stored.
"""
import dataclasses

import oslo_messaging as messaging
import pytest

from attachworker.audit import backoff
from attachworker.audit import consumer
from attachworker.audit import contract
from attachworker.audit import models
from attachworker.audit import store
from attachworker.audit import testing

pytestmark = pytest.mark.functional

HANDLED = messaging.NotificationResult.HANDLED
REQUEUE = messaging.NotificationResult.REQUEUE

#: What the contract would never let through, made into an event anyway: what a
#: bug in the contract, or a driver stricter than the tests, would hand the store.
#: (SQLite stores NUL and over-long text, and PostgreSQL takes 'yesterday'.)
POISONS = {
    'unadaptable value': (dict(fault_code={'a': 1}), ('sqlite', 'postgresql')),
    'lone surrogate': (dict(host='compute-\ud800'), ('sqlite', 'postgresql')),
    'NUL': (dict(fault_message='a\x00b'), ('postgresql',)),          # ValueError
    'too long': (dict(mountpoint='/dev/' + 'x' * 300), ('postgresql',)),  # DataError
    'not a datetime': (dict(timestamp='not-a-time'), ('sqlite', 'postgresql')),
    'no request id': (dict(request_id=None), ('sqlite', 'postgresql')),  # Integrity
}


@pytest.fixture
def endpoint(backend):
    audit_store = store.Store(store.create_engine(backend.url, busy_timeout=0.5))
    yield consumer.AuditEndpoint(audit_store, max_message_size=65536, excerpt_length=4096,
                                 backoff=backoff.Backoff(0.01, 0.05))
    audit_store.dispose()


def notification(**data):
    payload = testing.payload('attach', 'start', **data)
    request_id = payload['attachworker_object.data']['request_id']
    return {'request_id': request_id}, testing.message('attach', 'start', payload)


@pytest.mark.parametrize('change,refused_by', POISONS.values(), ids=list(POISONS))
def test_a_poison_row_is_rejected_alone(backend, endpoint, monkeypatch, change,
                                        refused_by):
    real = contract.parse

    def parse(ctxt, msg, *args):
        event = real(ctxt, msg, *args)
        return dataclasses.replace(event, **change) if msg['message_id'] == 'm-x' else event
    monkeypatch.setattr(contract, 'parse', parse)
    batch = [notification(), notification(), notification()]
    batch[1][1]['message_id'] = 'm-x'
    assert endpoint.handle_batch(batch) == [HANDLED] * 3
    if backend.name not in refused_by:  # this database takes it: nothing to refuse
        assert backend.count(models.events) == 3
        return
    assert endpoint.counts == {'stored': 2, 'duplicate': 0, 'rejected': 1, 'requeued': 0}
    assert backend.count(models.events) == 2
    [rejected] = backend.rows(models.rejected)
    assert (rejected['message_id'], rejected['event_type']) == (
        'm-x', 'instance.volume_attach.start')
    assert rejected['reason'].startswith('Audit store refused the row: ')


def test_surrogates_in_the_rejected_row_itself_are_stored_escaped(backend, endpoint):
    ctxt, msg = notification(host='h\ud800')
    msg.update(message_id='m-\ud800', event_type='e-\udfff', publisher_id='p-\ud800')
    assert endpoint.handle(ctxt, msg) == HANDLED
    [rejected] = backend.rows(models.rejected)
    assert (rejected['message_id'], rejected['event_type'], rejected['publisher_id']) == (
        'm-\\ud800', 'e-\\udfff', 'p-\\ud800')
    assert 'message_id is not UTF-8 text' in rejected['reason']


def test_an_outage_met_while_stopping_still_requeues(backend, endpoint):
    with backend.outage():
        endpoint.stop()  # else the message is held until the database is back
        assert endpoint.handle(*notification()) == REQUEUE
    assert endpoint.handle(*notification()) == HANDLED
    assert endpoint.counts['requeued'] == 1 and endpoint.counts['rejected'] == 0

"""A notification resent after a crash: the same ``message_id``, the same payload.

The compute worker republishes what it cannot prove was delivered, so the store
must keep exactly one event row and one operation row (counting one event) for
it: whether the copies come in one batch or in two, through one consumer or
racing through two, on SQLite and on PostgreSQL.
"""
import copy
import datetime
import threading

import oslo_messaging as messaging
import pytest

from attachworker.audit import backoff
from attachworker.audit import consumer
from attachworker.audit import models
from attachworker.audit import store
from attachworker.audit import testing
from tests.functional.audit.harness import wait_until

pytestmark = pytest.mark.functional

HANDLED = messaging.NotificationResult.HANDLED
T0 = datetime.datetime(2026, 11, 25, 10, 0, 0)


def operation(n):
    """(ctxt, message) of an operation's .end, and its copy as resent after a crash."""
    payload = testing.payload('detach', 'end', request_id='req-dup-%04d' % n)
    msg = testing.message('detach', 'end', payload, timestamp=str(T0))
    resent = dict(copy.deepcopy(msg), timestamp=str(T0 + datetime.timedelta(minutes=3)))
    ctxt = {'request_id': payload['attachworker_object.data']['request_id']}
    return (ctxt, msg), (dict(ctxt), resent)


def make_endpoint(url):
    return consumer.AuditEndpoint(
        store.Store(store.create_engine(url, busy_timeout=10)), max_message_size=65536,
        excerpt_length=1024, backoff=backoff.Backoff(0.01, 0.05))


def assert_one_row_each(backend, count, first_stored=T0):
    """One event and one operation per message id; the first copy stored wins."""
    events = {e['request_id']: e for e in backend.rows(models.events)}
    assert backend.count(models.events) == len(events) == count
    operations = backend.rows(models.operations)
    assert len(operations) == count
    for op in operations:
        ended = events[op['request_id']]['timestamp']
        assert first_stored in (None, ended)
        assert (op['events_count'], op['ended_at']) == (1, ended)


@pytest.mark.parametrize('batches', ['one batch', 'two batches'])
def test_copies_are_stored_once(backend, batches):
    endpoint = make_endpoint(backend.url)
    pairs = [operation(n) for n in range(20)]
    if batches == 'one batch':  # each copy right behind its original, and far from it
        batch = [item for pair in pairs[:10] for item in pair]
        batch += [original for original, _ in pairs[10:]] + [c for _, c in pairs[10:]]
        assert endpoint.handle_batch(batch) == [HANDLED] * 40
    else:
        assert endpoint.handle_batch([original for original, _ in pairs]) == [HANDLED] * 20
        assert endpoint.handle_batch([c for _, c in pairs]) == [HANDLED] * 20
    assert endpoint.counts == {'stored': 20, 'duplicate': 20, 'rejected': 0,
                               'requeued': 0}
    assert_one_row_each(backend, 20)


def test_copies_racing_through_two_consumers_are_stored_once(backend):
    endpoints = [make_endpoint(backend.url), make_endpoint(backend.url)]
    pairs = [operation(n) for n in range(200)]
    start = threading.Barrier(2)

    def run(index):
        start.wait()
        for chunk in range(0, len(pairs), 10):
            endpoints[index].handle_batch([pair[index] for pair in pairs[chunk:chunk + 10]])
    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts = [e.counts for e in endpoints]
    assert sum(c['stored'] for c in counts) == sum(c['duplicate'] for c in counts) == 200
    assert sum(c['requeued'] + c['rejected'] for c in counts) == 0
    assert_one_row_each(backend, 200, first_stored=None)  # either copy may win


@pytest.mark.slow
def test_copies_through_the_broker_are_stored_once(broker, backend, make_serve):
    make_serve().start().stop()  # the pool's queue now exists and keeps what comes
    pairs = [operation(n) for n in range(30)]
    publisher = broker.publisher()
    for (ctxt, msg), (_, resent) in pairs:  # each copy right behind: in one batch
        publisher.send(msg, ctxt)
        publisher.send(resent, ctxt)
    first = make_serve(batch_size=64, batch_timeout=1).start()
    wait_until(lambda: backend.count(models.events) == 30, 30, 'the originals stored')
    wait_until(lambda: broker.unsettled() == 0, 60, 'the copies handled')
    for _, (ctxt, resent) in pairs:  # a later resend: in batches of its own
        publisher.send(resent, ctxt)
    wait_until(lambda: broker.unsettled() == 0, 60, 'the late copies handled')
    assert first.stop() == 0
    assert first.counts() == {'stored': 30, 'duplicate': 60, 'rejected': 0,
                              'requeued': 0}
    assert_one_row_each(backend, 30)

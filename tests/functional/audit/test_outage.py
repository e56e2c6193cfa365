"""The database goes away mid-stream and comes back: nothing lost, nothing doubled,
nothing requeued (the consumer holds what it has until the database is back).

SQLite: another process holds the write lock for a few seconds (serve's busy
timeout is shorter). PostgreSQL: the throwaway database refuses connections and
its open ones are cut, then it is let back.
"""
import random
import threading
import time

import pytest

from attachworker.audit import models
from attachworker.audit import testing
from tests.functional.audit.harness import wait_until

pytestmark = pytest.mark.functional

MESSAGES = 3000
DUPLICATES = 300
OUTAGE_SECONDS = 4


@pytest.mark.slow
def test_database_outage_mid_stream(broker, backend, make_serve):
    rng = random.Random(7)
    messages = []
    for n in range(MESSAGES // 2):
        data = testing.payload('attach', 'start', request_id='req-out-%04d' % n)
        messages.append(testing.message('attach', 'start', data))
        end = testing.payload('attach', 'end', **dict(data['attachworker_object.data'],
                                                        duration_ms=n))
        messages.append(testing.message('attach', 'end', end))
    for _ in range(DUPLICATES):
        messages.insert(rng.randrange(len(messages)), dict(rng.choice(messages)))
    serves = [make_serve(sqlite_busy_timeout=0.5, db_retry_interval=0.1,
                         db_max_retry_interval=1).start() for _ in range(2)]

    def publish():  # a steady stream, about 10 s long, the outage in its middle
        publisher = broker.publisher()
        for n, msg in enumerate(messages):
            publisher.send(msg)
            if n % 100 == 99:
                time.sleep(0.3)
    publishing = threading.Thread(target=publish)
    publishing.start()
    wait_until(lambda: backend.count(models.events) >= MESSAGES // 4, 60,
               'a quarter stored before the outage', interval=0.05)
    with backend.outage():
        time.sleep(OUTAGE_SECONDS)
    after_outage = time.monotonic()
    publishing.join()
    wait_until(lambda: backend.count(models.events) == MESSAGES, 120,
               'every message stored after the outage', interval=0.2)
    caught_up = time.monotonic() - after_outage
    wait_until(lambda: broker.unsettled() == 0, 60, 'every message handled and acked')
    assert [serve.stop() for serve in serves] == [0, 0]
    counts = [serve.counts() for serve in serves]
    requeued = sum(c['requeued'] for c in counts)
    print('\n[%s] outage %ds; %d requeued; caught up %.1fs after it; per consumer: %s'
          % (backend.name, OUTAGE_SECONDS, requeued, caught_up, counts))

    # held, not requeued: a requeue would count a delivery toward the quorum limit
    assert requeued == 0, 'the outage was waited out in place'
    assert sum(c['stored'] for c in counts) == MESSAGES
    assert sum(c['duplicate'] for c in counts) == DUPLICATES
    assert sum(c['rejected'] for c in counts) == 0
    assert broker.queue_depth()[0] == 0
    events = backend.rows(models.events)
    assert len({e['message_id'] for e in events}) == len(events) == MESSAGES
    operations = backend.rows(models.operations)
    assert len(operations) == MESSAGES // 2
    assert all(op['outcome'] == 'success' and op['events_count'] == 2
               and op['started_at'] is not None for op in operations)

"""10,000 notifications with duplicates, two competing serve processes, one store."""
import random
import time

import pytest

from attachworker.audit import models
from attachworker.audit import testing
from tests.functional.audit.harness import publish_in_threads
from tests.functional.audit.harness import wait_until

pytestmark = pytest.mark.functional

OPERATIONS = 4500  # 3,500 with start and end/error, 500 start only, 500 end only
DISTINCT = 8000
TOTAL = 10_000  # 2,000 duplicates


def build(rng):
    """(messages to publish, expected operation rows by request id, distinct ids)."""
    messages, expected = [], {}
    for n in range(OPERATIONS):
        action = rng.choice(('attach', 'detach'))
        ending = 'error' if n % 5 == 0 else 'end'
        shape = 'both' if n < 3500 else ('start' if n < 4000 else 'end')
        data = testing.payload(action, 'start', host='compute-%d' % (n % 7),
                               request_id='req-ft-%05d' % n)['attachworker_object.data']
        phases = {'both': ('start', ending), 'start': ('start',), 'end': (ending,)}[shape]
        for phase in phases:
            payload = testing.payload(action, phase, **dict(
                data, duration_ms=None if phase == 'start' else 100 + n,
                fault=testing.fault() if phase == 'error' else None))
            messages.append(testing.message(action, phase, payload,
                                            host='compute-%d' % (n % 7)))
        last = phases[-1]
        expected[data['request_id']] = {
            'action': action, 'events_count': len(phases),
            'outcome': {'start': 'pending', 'end': 'success', 'error': 'error'}[last],
            'duration_ms': None if last == 'start' else 100 + n,
            'fault_step': 'attachment_update' if last == 'error' else None,
            'host': 'compute-%d' % (n % 7)}
    distinct = len(messages)
    rng.shuffle(messages)  # an .end often comes before its .start
    duplicates = TOTAL - distinct
    for i in range(duplicates):  # half right behind the original: the racing kind
        original = rng.randrange(len(messages))
        place = original + 1 if i % 2 else rng.randrange(len(messages))
        messages.insert(place, dict(messages[original]))
    return messages, expected, distinct


@pytest.mark.slow
def test_ten_thousand_with_duplicates_two_consumers(broker, backend, make_serve):
    messages, expected, distinct = build(random.Random(20261125))
    assert len(messages) == TOTAL and distinct == DISTINCT
    serves = [make_serve().start(), make_serve().start()]

    began = time.monotonic()
    publish_seconds = publish_in_threads(broker.publisher, messages)
    wait_until(lambda: backend.count(models.events) == distinct, 240,
               'all distinct messages stored', interval=0.5)
    stored_seconds = time.monotonic() - began
    wait_until(lambda: broker.unsettled() == 0, 120, 'every message handled and acked')
    assert [serve.stop() for serve in serves] == [0, 0]
    counts = [serve.counts() for serve in serves]
    print('\n[%s] published %d in %.1fs (%.0f/s); %d distinct stored after %.1fs '
          '(%.0f/s); per consumer: %s' % (
              backend.name, TOTAL, publish_seconds, TOTAL / publish_seconds, distinct,
              stored_seconds, distinct / stored_seconds, counts))

    assert broker.queue_depth()[0] == 0  # nothing was left unacknowledged
    assert all(c['stored'] > 0 for c in counts), 'both consumers took a share'
    assert sum(c['stored'] for c in counts) == distinct
    assert sum(c['duplicate'] for c in counts) == TOTAL - distinct
    assert sum(c['rejected'] + c['requeued'] for c in counts) == 0

    events = backend.rows(models.events)
    assert len(events) == len({e['message_id'] for e in events}) == distinct
    assert {e['message_id'] for e in events} == {m['message_id'] for m in messages}
    operations = {op['request_id']: op for op in backend.rows(models.operations)}
    assert operations.keys() == expected.keys()
    for request_id, want in expected.items():
        got = {key: operations[request_id][key] for key in want}
        assert got == want, request_id
    started = [op for op in operations.values() if op['events_count'] == 2]
    assert all(op['started_at'] and op['ended_at'] for op in started)

    # what an auditor sees of it, through the command
    stats = serves[0].command('stats', '--format', 'json', '--open-timeout', '0')
    assert stats.returncode == 0, stats.stderr
    assert '"operations": %d' % OPERATIONS in stats.stdout

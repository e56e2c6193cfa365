"""What an auditor asks: list with filters, one operation's timeline, statistics."""
import datetime

import pytest

from attachworker.audit import queries
from attachworker.exception import OperationNotFound
from tests.unit.audit.helpers import T0
from tests.unit.audit.helpers import event

MINUTE = datetime.timedelta(minutes=1)

#: request id -> (action, host, volume, instance, project, minutes after T0, ending)
OPERATIONS = {
    'req-a': ('attach', 'compute-1', 'vol-1', 'inst-1', 'proj-1', 0, 'end'),
    'req-b': ('attach', 'compute-2', 'vol-2', 'inst-1', 'proj-1', 10, 'error'),
    'req-c': ('detach', 'compute-1', 'vol-1', 'inst-1', 'proj-2', 20, 'end'),
    'req-d': ('attach', 'compute-2', 'vol-3', 'inst-2', 'proj-2', 30, None),
}


@pytest.fixture
def filled(audit_store, engine):
    for rid, (action, host, vol, inst, proj, minutes, ending) in OPERATIONS.items():
        common = dict(request_id=rid, host=host, volume_id=vol, instance_uuid=inst,
                      project_id=proj)
        started = T0 + minutes * MINUTE
        audit_store.record_event(event(action, 'start', at=started, **common))
        if ending:
            audit_store.record_event(event(action, ending, at=started + MINUTE / 2,
                                           duration_ms=30000, **common))
    return engine


def ids(rows):
    return [row['request_id'] for row in rows]


@pytest.mark.parametrize('filters,expected', [
    ({}, ['req-a', 'req-b', 'req-c', 'req-d']),
    ({'volume_id': 'vol-1'}, ['req-a', 'req-c']),
    ({'instance_uuid': 'inst-2'}, ['req-d']),
    ({'host': 'compute-2'}, ['req-b', 'req-d']),
    ({'project_id': 'proj-2'}, ['req-c', 'req-d']),
    ({'outcome': 'error'}, ['req-b']),
    ({'outcome': 'pending'}, ['req-d']),
    ({'action': 'detach'}, ['req-c']),
    ({'since': T0 + 10 * MINUTE}, ['req-b', 'req-c', 'req-d']),
    ({'until': T0 + 10 * MINUTE}, ['req-a', 'req-b']),
    ({'since': T0 + 5 * MINUTE, 'until': T0 + 25 * MINUTE, 'host': 'compute-1'},
     ['req-c']),
])
def test_list_filters(filled, filters, expected):
    assert ids(queries.list_operations(filled, queries.Filters(**filters))) == expected


def test_list_limit_gives_the_newest_oldest_first(filled):
    assert ids(queries.list_operations(filled, queries.Filters(), limit=2)) == [
        'req-c', 'req-d']


def test_show_gives_the_timeline_in_time_order(filled, audit_store):
    # an .end delivered before its .start still shows after it
    audit_store.record_event(event('attach', 'end', at=T0 + 41 * MINUTE,
                                   request_id='req-e'))
    audit_store.record_event(event('attach', 'start', at=T0 + 40 * MINUTE,
                                   request_id='req-e'))
    op = queries.get_operation(filled, 'req-e')
    assert [e['event_type'] for e in op['events']] == ['instance.volume_attach.start',
                                                       'instance.volume_attach.end']
    assert op['events'][0]['payload']['attachworker_object.data']['request_id'] == 'req-e'
    assert op['outcome'] == 'success'


def test_show_an_unknown_request(filled):
    with pytest.raises(OperationNotFound, match='req-nope'):
        queries.get_operation(filled, 'req-nope')


def test_stats_counts_and_open_operations(filled):
    now = T0 + 40 * MINUTE
    result = queries.stats(filled, queries.Filters(), open_timeout=600, now=now)
    assert result['operations'] == 4
    assert result['by_outcome'] == {'pending': 1, 'success': 2, 'error': 1}
    assert result['by_host'] == {
        'compute-1': {'pending': 0, 'success': 2, 'error': 0, 'total': 2},
        'compute-2': {'pending': 1, 'success': 0, 'error': 1, 'total': 2}}
    assert [op['request_id'] for op in result['open']] == ['req-d']  # started 10 min ago
    assert result['open'][0]['age_s'] == 600
    later = queries.stats(filled, queries.Filters(), open_timeout=601, now=now)
    assert later['open'] == []


def test_stats_duration_percentiles_are_nearest_rank(audit_store, engine):
    for n in range(1, 101):
        audit_store.record_event(event('attach', 'end', request_id='req-%d' % n,
                                       duration_ms=n * 10))
    result = queries.stats(engine, queries.Filters(), open_timeout=0)
    assert result['duration_ms'] == {'count': 100, 'p50': 500, 'p95': 950, 'max': 1000}


def test_stats_with_nothing_stored(engine):
    result = queries.stats(engine, queries.Filters(), open_timeout=0)
    assert result['duration_ms'] == {'count': 0, 'p50': None, 'p95': None, 'max': None}
    assert result['operations'] == 0 and result['open'] == []


@pytest.mark.parametrize('text,expected', [
    ('90m', T0 - 90 * MINUTE),
    ('2d', T0 - datetime.timedelta(days=2)),
    ('2026-11-24', datetime.datetime(2026, 11, 24)),
    ('2026-11-24T08:00:00+02:00', datetime.datetime(2026, 11, 24, 6)),
])
def test_time_arguments(text, expected):
    assert queries.parse_time(text, now=T0) == expected

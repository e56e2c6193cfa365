"""The store: one row per message, one per operation, in any order, from any process."""
import dataclasses
import datetime
import itertools
import random
import threading

import pytest
from sqlalchemy import exc as sa_exc

from attachworker.audit import models
from attachworker.audit import store
from attachworker.exception import AuditBackendUnsupported
from attachworker.exception import AuditRecordRefused
from attachworker.exception import AuditStoreUnavailable
from tests.unit.audit.helpers import T0
from tests.unit.audit.helpers import count
from tests.unit.audit.helpers import event
from tests.unit.audit.helpers import rows

SECOND = datetime.timedelta(seconds=1)


def operation_events(request_id, phases, action='attach', **data):
    """Events of one operation, ``phases[i]`` happening at T0 + i seconds."""
    data.setdefault('instance_uuid', 'inst-1')
    data.setdefault('volume_id', 'vol-1')
    return [event(action, phase, at=T0 + i * SECOND, request_id=request_id,
                  duration_ms=None if phase == 'start' else 1000 * i, **data)
            for i, phase in enumerate(phases)]


def test_a_message_is_stored_once(audit_store, engine):
    start = event('attach', 'start', request_id='req-1')
    assert audit_store.record_event(start) is True
    assert audit_store.record_event(start) is False
    assert count(engine, models.events) == 1
    assert rows(engine, models.operations)[0]['events_count'] == 1


@pytest.mark.parametrize('order', list(itertools.permutations(range(2))))
@pytest.mark.parametrize('ending', ['end', 'error'])
def test_start_and_end_join_in_any_order(audit_store, engine, order, ending):
    events = operation_events('req-1', ['start', ending])
    for index in order:
        audit_store.record_event(events[index])
    [op] = rows(engine, models.operations)
    assert op['outcome'] == ('success' if ending == 'end' else 'error')
    assert (op['started_at'], op['ended_at']) == (T0, T0 + SECOND)
    assert op['duration_ms'] == 1000
    assert op['events_count'] == 2
    assert op['fault_step'] == (None if ending == 'end' else 'attachment_update')
    assert (op['action'], op['volume_id'], op['instance_uuid']) == ('attach', 'vol-1',
                                                                   'inst-1')


@pytest.mark.parametrize('order', list(itertools.permutations(range(3))))
def test_an_error_is_never_overwritten_by_an_end(audit_store, engine, order):
    events = operation_events('req-1', ['start', 'error', 'end'])
    for index in order:
        audit_store.record_event(events[index])
    [op] = rows(engine, models.operations)
    assert (op['outcome'], op['ended_at'], op['duration_ms']) == ('error', T0 + SECOND,
                                                                  1000)
    assert op['fault_exception'] == 'CinderUnavailable'
    assert op['started_at'] == T0


def test_an_end_without_start_is_an_operation_with_no_start_time(audit_store, engine):
    audit_store.record_event(operation_events('req-1', ['start', 'end'])[1])
    [op] = rows(engine, models.operations)
    assert (op['outcome'], op['started_at'], op['ended_at']) == ('success', None,
                                                                 T0 + SECOND)


def test_fields_missing_on_start_are_filled_by_the_end(audit_store, engine):
    start = event('attach', 'start', at=T0, request_id='req-1', attachment_id=None)
    end = event('attach', 'end', at=T0 + SECOND, request_id='req-1',
                attachment_id='att-9')
    audit_store.record_event(start)
    audit_store.record_event(end)
    assert rows(engine, models.operations)[0]['attachment_id'] == 'att-9'


def test_two_processes_storing_the_same_messages_agree(db_path, engine):
    """Two stores (two engines, as two serve processes) race on every message."""
    events = []
    for n in range(60):
        events += operation_events('req-%d' % n, ['start', 'end' if n % 3 else 'error'])
    stores = [store.Store(store.create_engine('sqlite:///%s' % db_path, busy_timeout=10))
              for _ in range(2)]
    results = [[], []]

    def run(index):
        mine = list(events)
        random.Random(index).shuffle(mine)
        results[index] = [stores[index].record_event(e) for e in mine]
    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(results[0]) + sum(results[1]) == len(events)  # each stored by one only
    assert count(engine, models.events) == len(events)
    ops = rows(engine, models.operations)
    assert len(ops) == 60
    for op in ops:
        n = int(op['request_id'].split('-')[1])
        assert op['outcome'] == ('success' if n % 3 else 'error')
        assert op['events_count'] == 2 and op['started_at'] == T0
    for s in stores:
        s.dispose()


def test_a_locked_database_is_reported_unavailable(audit_store, engine, lock_database):
    lock_database()
    with pytest.raises(AuditStoreUnavailable, match='database is locked'):
        audit_store.record_event(event('attach', 'start'))


def test_rejected_messages_are_kept_once_per_message_id(audit_store, engine):
    def reject(message_id):
        return audit_store.record_rejected(reason='bad', size=3, excerpt='bad',
                                           received_at=T0, message_id=message_id)
    assert reject('m-1') is True
    assert reject('m-1') is False
    assert reject(None) is True and reject(None) is True  # no id: nothing to compare
    assert count(engine, models.rejected) == 3


def test_only_sqlite_and_postgresql_are_accepted():
    with pytest.raises(AuditBackendUnsupported, match='mysql'):
        store.create_engine('mysql+pymysql://root@127.0.0.1/audit')


def test_default_url_is_a_file_under_state_path(tmp_path):
    assert store.default_url(str(tmp_path)) == 'sqlite:///%s/audit.sqlite' % tmp_path


def test_a_batch_with_repeats_and_whole_operations(audit_store, engine):
    """Duplicates inside the batch and of stored rows; all of an operation at once."""
    stored_before = event('attach', 'start', at=T0, request_id='req-old')
    audit_store.record_event(stored_before)
    start, error, end = operation_events('req-1', ['start', 'error', 'end'])
    other = event('detach', 'end', at=T0, request_id='req-2')
    batch = [end, other, stored_before, start, end, error]
    assert audit_store.record_events(batch) == [True, True, False, True, False, True]
    ops = {op['request_id']: op for op in rows(engine, models.operations)}
    assert (ops['req-1']['outcome'], ops['req-1']['events_count'],
            ops['req-1']['started_at'], ops['req-1']['ended_at']) == ('error', 3, T0,
                                                                       T0 + SECOND)
    assert ops['req-2']['outcome'] == 'success'
    assert ops['req-old']['events_count'] == 1
    assert count(engine, models.events) == 5


# --- an outage requeues; anything else is about the rows ---------------------------

class _Orig(Exception):
    def __init__(self, pgcode=None, sqlite_errorname=None):
        super().__init__('driver error')
        self.pgcode, self.sqlite_errorname = pgcode, sqlite_errorname


def _dbapi(cls, invalidated=False, **orig):
    return cls('INSERT ...', {}, _Orig(**orig), connection_invalidated=invalidated)


OUTAGES = [
    (_dbapi(sa_exc.OperationalError), True),                  # locked, cannot connect
    (_dbapi(sa_exc.InterfaceError, invalidated=True), True),  # connection lost
    (_dbapi(sa_exc.DatabaseError, invalidated=True), True),   # SSL SYSCALL error: EOF
    (sa_exc.TimeoutError('QueuePool limit reached'), True),
    (sa_exc.DisconnectionError('gone'), True),
    (_dbapi(sa_exc.InternalError, pgcode='25006'), True),     # a read-only standby
    (_dbapi(sa_exc.ProgrammingError, pgcode='42P01'), True),  # no such table
    (_dbapi(sa_exc.DatabaseError, sqlite_errorname='SQLITE_CORRUPT'), True),
    (_dbapi(sa_exc.IntegrityError, pgcode='23502'), False),   # NOT NULL
    (_dbapi(sa_exc.DataError, pgcode='22001'), False),        # value too long
    (_dbapi(sa_exc.ProgrammingError), False),                 # cannot adapt a dict
    (_dbapi(sa_exc.InterfaceError), False),                   # sqlite: binding
    (sa_exc.StatementError('bad value', 'INSERT ...', {}, TypeError('datetime')), False),
    (TypeError('unhashable'), False),
    (ValueError('NUL'), False),
    (UnicodeEncodeError('utf-8', '\ud800', 0, 1, 'surrogates not allowed'), False),
    (RecursionError(), False),
]


@pytest.mark.parametrize('exc,outage', OUTAGES, ids=[
    '%d-%s' % (n, type(exc).__name__) for n, (exc, _) in enumerate(OUTAGES)])
def test_only_an_outage_is_unavailable(exc, outage):
    assert store.is_outage(exc) is outage
    expected = AuditStoreUnavailable if outage else AuditRecordRefused
    with pytest.raises(expected), store.translate_errors():
        raise exc


POISONS = {
    # values the drivers cannot take: they raise before anything is sent
    'unadaptable value': dict(fault_code={'a': 1}),
    'surrogate': dict(host='compute-\ud800'),
    'not a datetime': dict(timestamp='yesterday'),
    'missing key': dict(request_id=None),                     # NOT NULL
}


@pytest.mark.parametrize('change', POISONS.values(), ids=list(POISONS))
def test_a_row_the_database_cannot_take_is_refused_not_an_outage(audit_store, engine,
                                                                 change):
    poison = dataclasses.replace(event('attach', 'start'), **change)
    with pytest.raises(AuditRecordRefused):
        audit_store.record_events([event('attach', 'start'), poison])
    assert count(engine, models.events) == 0  # the batch's transaction rolled back
    assert audit_store.record_event(event('attach', 'start')) is True  # not wedged


@pytest.mark.parametrize('error', [TypeError('bug'), ValueError('bug'),
                                   KeyError('bug')])
def test_an_error_building_rows_is_refused_not_an_outage(audit_store, monkeypatch, error):
    def broken(event):
        raise error
    monkeypatch.setattr(store, '_operation_row', broken)
    with pytest.raises(AuditRecordRefused, match='bug'):
        audit_store.record_event(event('attach', 'start'))


def test_rejected_rows_are_masked_escaped_and_cut_to_their_columns(audit_store, engine):
    assert audit_store.record_rejected(
        reason='event type %r is not ours; password=pw-1 ' % ('x\ud800',) + 'r' * 2000,
        size=3, excerpt='{"k": "masked by the caller"}', received_at=T0,
        message_id='m\ud800\x00 token=tok-1', event_type='e\ud800 chap_secret=cs-1',
        publisher_id='p' * 300 + '\udfff')
    [row] = rows(engine, models.rejected)
    assert row['reason'].startswith("event type 'x\\ud800' is not ours; password=***")
    assert len(row['reason']) == 1024
    assert row['message_id'] == 'm\\ud800\\x00 token=***'
    assert row['event_type'] == 'e\\ud800 chap_secret=***'
    assert row['publisher_id'] == 'p' * 255
    assert row['excerpt'] == '{"k": "masked by the caller"}'


@pytest.mark.parametrize('order', list(itertools.permutations(range(3))))
def test_a_later_cleanup_is_in_the_trail_and_never_the_outcome(audit_store, engine, order):
    """An undo that failed, finished later: its .cleanup joins the operation's events
    and leaves the .error as the outcome, whatever order they arrive in."""
    events = operation_events('req-1', ['start', 'error', 'cleanup'])
    for index in order:
        audit_store.record_event(events[index])
    [op] = rows(engine, models.operations)
    assert op['outcome'] == 'error'
    assert (op['started_at'], op['ended_at']) == (T0, T0 + SECOND)
    assert op['events_count'] == 3
    assert sorted(r['outcome'] for r in rows(engine, models.events)) == [
        'cleanup', 'error', 'pending']

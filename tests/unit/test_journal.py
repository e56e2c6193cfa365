"""The journal and the outbox: what is on disk, and what gets published when."""
import os
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from attachworker import context as aw_context
from attachworker import exception
from attachworker.worker import locks
from attachworker.worker.journal import Journal
from attachworker.worker.operation import Operation
from attachworker.worker.outbox import Outbox


class FlakyNotifier:
    """Records what it publishes; refuses while ``down``."""

    def __init__(self):
        self.down = False
        self.poison = set()  # request ids whose payload "cannot be encoded"
        self.sent = []
        self.events = []
        self._poisoned = False

    def notify(self, ctxt, action, phase, fault=None, event=None, **fields):
        self._poisoned = fields.get('request_id') in self.poison
        if self.down or self._poisoned:
            return False
        self.sent.append(('%s.%s' % (action, phase), fields.get('request_id'), ctxt))
        self.events.append(event)
        return True

    def last_failure_is_poison(self):
        return self._poisoned

    def last_failure(self):
        return 'TypeError: cannot encode'



@pytest.fixture
def journal(tmp_path):
    j = Journal(str(tmp_path))
    yield j
    j.close()


class FailingCommit:
    """The group commit's connection, whose next COMMIT fails once ``fail`` is set
    (a disk error at the fsync), and every COMMIT of which takes ``slow`` seconds
    (a slow disk); everything else goes to the real one."""

    def __init__(self, db):
        self._real = db
        self.fail = False
        self.slow = 0.0

    def execute(self, sql, *args):
        if sql == 'COMMIT':
            time.sleep(self.slow)
        if sql == 'COMMIT' and self.fail:
            self.fail = False
            self._real.execute('ROLLBACK')
            raise sqlite3.OperationalError('disk I/O error')
        return self._real.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.fixture
def failing_commit(journal):
    journal._group._db = FailingCommit(journal._group._db)
    return journal._group._db


def test_steps_and_their_undos_are_on_disk_before_and_after_they_run(journal, tmp_path,
                                                                     failing_commit):
    op = Operation('volume_attach', 'req-1', 'h1', observer=journal)
    journal.begin(op, {'request_id': 'req-1'})
    failing_commit.slow = 0.3   # a slow disk: what is not waited for is not there yet
    seen_during = []

    def create():
        # while the step runs, another process already sees its undo, id unknown
        seen_during.extend(Journal(str(tmp_path), owner='1:1').stack(op.id))
        return {'id': 'att-1'}
    op.step('attachment_create', create,
            undo=('release_attachment', {'attachment_id': None, 'volume_id': 'v'}),
            rearm=lambda result: {'attachment_id': result['id']})
    assert [(e['name'], e['args']['attachment_id'], e['state']) for e in seen_during] == [
        ('release_attachment', None, 'armed')]
    # the rearmed id is on disk before the operation acts again: while the next step
    # runs (one that arms nothing), another process sees it
    seen_next = []

    def update():
        other = Journal(str(tmp_path), owner='2:1')
        seen_next.append((other.get('req-1'), other.stack(op.id), other.steps(op.id)))
        other.close()
    op.step('attachment_update', update)
    record, stack, steps = seen_next[0]
    assert record['state'] == 'running'
    assert (record['last_step'], record['step_state']) == ('attachment_update', 'started')
    assert [(e['name'], e['args']['attachment_id'], e['state']) for e in stack] == [
        ('release_attachment', 'att-1', 'armed')]
    assert [(s['step'], s['state']) for s in steps] == [
        ('attachment_create', 'started'), ('attachment_create', 'done'),
        ('attachment_update', 'started')]


def test_an_end_that_did_not_wait_and_was_lost_stops_the_operation_before_it_acts(
        journal, failing_commit, tmp_path):
    """The rearm is not waited for; its batch fails: the next step's record confirms
    it, so that step never runs on an undo the disk does not have."""
    op = Operation('volume_attach', 'req-lost', 'h1', observer=journal)
    journal.begin(op, {})

    def create():
        failing_commit.fail = True   # the COMMIT of what comes next fails
        return {'id': 'att-1'}
    op.step('attachment_create', create,
            undo=('release_attachment', {'attachment_id': None, 'volume_id': 'v'}),
            rearm=lambda result: {'attachment_id': result['id']})
    journal._group.sync()   # that batch is settled, failed, before the next record
    assert not failing_commit.fail
    ran = []
    with pytest.raises(exception.JournalError, match='disk I/O error'):
        op.step('attachment_update', lambda: ran.append('update'))
    assert ran == []
    # on disk: the undo as its start armed it; the next record rewrites the fields
    assert [(e['args']['attachment_id'], e['state']) for e in journal.stack(op.id)] == [
        (None, 'armed')]
    assert op.journalled_version is None


def test_a_failed_operation_undoes_only_once_its_ends_are_on_disk(journal, failing_commit,
                                                                 tmp_path):
    """A step's end that armed a resume did not wait; the operation stops before its
    next step (the worker is stopping): before its stack runs, the resume is on disk,
    on a disk slow enough that an undo that did not wait would run first."""
    op = Operation('volume_attach', 'req-stop', 'h1', observer=journal)
    journal.begin(op, {})
    failing_commit.slow = 0.5
    op.step('driver_attach', lambda: None, undo=('driver_detach', {'volume_id': 'v'}),
            resume=('complete_attachment', {'attachment_id': 'att-1'}))
    op._abort.set()
    with pytest.raises(exception.ShuttingDown):
        op.step('attachment_complete', lambda: None)
    seen = stack_seen_by_another_process(tmp_path, op, owner='3:1')
    assert seen == [[('driver_detach', 'armed'), ('complete_attachment', 'armed')]]
    assert journal._unsynced == {}


def test_a_lost_commit_is_the_steps_failure_never_an_end(journal, failing_commit):
    """The commit waits: the outcome (.end) is told right after it, and a commit the
    disk lost would let recovery undo what was told done."""
    op = Operation('volume_attach', 'req-commit', 'h1', observer=journal)
    journal.begin(op, {})

    def complete():
        failing_commit.fail = True
    with pytest.raises(exception.JournalError, match='disk I/O error'):
        op.step('attachment_complete', complete, commit=True,
                undo=('release_attachment', {'attachment_id': 'att-1'}))
    record = journal.get('req-commit')
    assert not record['committed']
    assert [e['state'] for e in op.stack] == ['armed']   # not committed in memory either


def test_a_lost_end_is_written_again_from_memory_before_the_undo(journal, failing_commit,
                                                                 tmp_path):
    """The resume's batch failed; the worker stops before the next step: the stack the
    undo runs by is written again first, so that recovery would replay that one."""
    op = Operation('volume_attach', 'req-again', 'h1', observer=journal)
    journal.begin(op, {})

    def attach():
        failing_commit.fail = True
    op.step('driver_attach', attach, undo=('driver_detach', {'volume_id': 'v'}),
            resume=('complete_attachment', {'attachment_id': 'att-1'}))
    journal._group.sync()
    assert [e['name'] for e in journal.stack(op.id)] == ['driver_detach']   # lost
    op._abort.set()
    with pytest.raises(exception.ShuttingDown):
        op.step('attachment_complete', lambda: None)
    seen = stack_seen_by_another_process(tmp_path, op, owner='4:1')
    assert seen == [[('driver_detach', 'armed'), ('complete_attachment', 'armed')]]


def test_the_end_of_a_step_that_arms_nothing_is_written_with_the_next_start(journal,
                                                                           tmp_path):
    op = Operation('volume_attach', 'req-d', 'h1', observer=journal)
    journal.begin(op, {})

    def connector():   # a step that hangs: the journal, read by another process, says so
        seen.append(wait_committed(tmp_path, 'req-d'))
        return {}
    seen = []
    op.step('connector', connector)
    assert seen == [('connector', 'started')]
    assert [(s['step'], s['state']) for s in journal.steps(op.id)] == [
        ('connector', 'started')]                 # its done waits for the next write
    op.step('reserve', lambda: None, undo=('unreserve', {'volume_id': 'v'}))
    assert [(s['step'], s['state']) for s in journal.steps(op.id)] == [
        ('connector', 'started'), ('connector', 'done'), ('reserve', 'started')]
    journal.finish(op.id, 'completed')
    record = journal.get('req-d')
    assert (record['state'], record['last_step'], record['step_state']) == (
        'completed', 'reserve', 'done')
    assert journal._deferred == {}   # nothing left behind once the operation ended


def wait_committed(state_path, request_id, timeout=5.0):
    """(last_step, step_state) another process sees once it is committed."""
    other = Journal(str(state_path), owner='9:9')
    deadline = time.monotonic() + timeout
    while True:
        record = other.get(request_id)
        if record['last_step'] or time.monotonic() > deadline:
            other.close()
            return record['last_step'], record['step_state']
        time.sleep(0.01)


def stack_seen_by_another_process(tmp_path, op, owner):
    """Undo op; as each undo runs, its stack as another process reads it."""
    seen = []

    class Compensator:
        def run(self, name, args):
            other = Journal(str(tmp_path), owner=owner)
            seen.append([(e['name'], e['state']) for e in other.stack(op.id)])
            other.close()
    op.undo(Compensator())
    return seen


def test_deferred_ends_go_with_an_undo_record_and_new_fields_are_never_deferred(
        journal, tmp_path, failing_commit):
    op = Operation('volume_attach', 'req-u', 'h1', observer=journal)
    journal.begin(op, {})
    op.step('connector', lambda: {})
    journal.set_undo_state(op.id, {'name': 'unreserve', 'seq': 1}, 'done')
    assert [(s['step'], s['state']) for s in journal.steps(op.id)] == [
        ('connector', 'started'), ('connector', 'done'), ('unreserve', 'undo_done')]
    op.update(mountpoint='/dev/vdb')    # recovery reports these: written with the next
    op.step('check_attach', lambda: None)   # record, on disk with the next that waits
    assert journal.get('req-u')['fields']['mountpoint'] == '/dev/vdb'
    failing_commit.slow = 0.3
    seen = []

    def reserve():   # the start before it waited (it arms): the fields are on disk too
        other = Journal(str(tmp_path), owner='2:1')
        seen.append(other.get('req-u'))
        other.close()
    op.step('reserve', reserve, undo=('unreserve', {'volume_id': 'v'}))
    assert seen[0]['last_step'] == 'reserve'
    assert seen[0]['fields']['mountpoint'] == '/dev/vdb'


def test_a_definite_refusal_drops_the_undo_an_ambiguous_failure_keeps_it(journal):
    op = Operation('volume_attach', 'req-r', 'h1', observer=journal)
    journal.begin(op, {})

    def refused():
        raise exception.InvalidVolume(volume_id='v', reason='in-use')

    def timed_out():
        raise exception.CinderUnavailable(reason='timed out', code=504)
    for fn in (refused, timed_out):
        with pytest.raises(exception.AttachWorkerException):
            op.step('reserve', fn, undo=('unreserve', {'volume_id': 'v'}))
    assert [e['state'] for e in journal.stack(op.id)] == ['dropped', 'armed']
    assert [e['state'] for e in op.stack] == ['dropped', 'armed']


def test_commit_is_atomic_with_the_last_step(journal):
    op = Operation('volume_attach', 'req-c', 'h1', observer=journal)
    journal.begin(op, {})
    op.step('reserve', lambda: None, undo=('unreserve', {'volume_id': 'v'}))
    op.step('attach', lambda: None, undo=('legacy_detach', {'volume_id': 'v'}), commit=True)
    assert {e['state'] for e in journal.stack(op.id)} == {'committed'}
    assert journal.get('req-c')['committed'] == 1


def test_journal_never_holds_secrets(journal):
    op = Operation('volume_attach', 'req-2', 'h1', observer=journal)
    journal.begin(op, aw_context.RequestContext(auth_token='tok-SECRET').redacted())
    connector = op.step('connector', lambda: {'initiator': 'iqn.x', 'host': 'h1'})
    op.update(connector=connector)
    op.step('initialize_connection', lambda: None, undo=('terminate_connection', {
        'volume_id': 'v', 'connector': dict(connector, password='pw-SECRET')}))
    op.step('attachment_update', lambda: {'driver_volume_type': 'iscsi',
                                          'data': {'auth_password': 'chap-SECRET'}})
    with open(journal.path, 'rb') as f:
        data = f.read()
    wal = journal.path + '-wal'
    if os.path.exists(wal):
        with open(wal, 'rb') as f:
            data += f.read()
    assert b'tok-SECRET' not in data and b'chap-SECRET' not in data
    assert b'pw-SECRET' not in data  # undo arguments are masked too
    assert b'iqn.x' in data  # the connector is kept: recovery needs it


def test_orphans_are_operations_of_dead_processes_only(journal, tmp_path):
    mine = Operation('volume_attach', 'req-live', 'h1', observer=journal)
    journal.begin(mine, {})
    dead = Journal(str(tmp_path), owner='999999:1')
    orphan = Operation('volume_attach', 'req-dead', 'h1', observer=dead)
    dead.begin(orphan, {})
    done = Operation('volume_attach', 'req-done', 'h1', observer=dead)
    dead.begin(done, {})
    dead.finish(done.id, 'completed')
    assert journal.orphans() == []  # its owner lock is held: alive
    dead.close()
    assert [o['request_id'] for o in journal.orphans()] == ['req-dead']
    assert journal.claim(orphan.id, '999999:1')
    assert not journal.claim(orphan.id, '999999:1')  # someone (we) took it already
    assert journal.orphans() == []


def test_an_owner_is_alive_exactly_while_it_holds_its_lock(tmp_path):
    me = locks.process_identity()
    journal = Journal(str(tmp_path))
    assert locks.owner_alive(str(tmp_path), me)
    pid, start = me.split(':')
    # the same pid with another start time (pid reuse) holds no lock
    assert not locks.owner_alive(str(tmp_path), '%s:%d' % (pid, int(start) + 1))
    journal.close()
    assert not locks.owner_alive(str(tmp_path), me)
    # a process killed -9 lets go of its lock
    script = textwrap.dedent('''
        import os, signal, sys
        from attachworker.worker.journal import Journal
        j = Journal(sys.argv[1])
        print(j.owner, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    ''')
    done = subprocess.run([sys.executable, '-c', script, str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == -9
    assert not locks.owner_alive(str(tmp_path), done.stdout.strip())


def test_finish_queues_the_outcome_in_the_same_transaction(journal):
    op = Operation('volume_attach', 'req-3', 'h1', observer=journal)
    journal.begin(op, {})
    outbox_id = journal.finish(op.id, 'completed', op.fields, notification={
        'action': 'volume_attach', 'phase': 'end', 'fields': op.payload(), 'fault': None,
        'context': {'request_id': 'req-3'}})
    assert journal.get('req-3')['state'] == 'completed'
    assert [r['id'] for r in journal.unsent()] == [outbox_id]


def test_begin_queues_the_start_with_the_operation_and_a_duplicate_queues_none(
        journal, tmp_path):
    start = {'action': 'volume_attach', 'phase': 'start', 'fields': {'request_id': 'req-s'},
             'fault': None, 'context': {'request_id': 'req-s'}}
    op = Operation('volume_attach', 'req-s', 'h1', observer=journal)
    assert journal.begin(op, {}, 'cast-1', notification=start)
    other = Journal(str(tmp_path), owner='2:1')    # committed: another process sees both
    assert other.get('req-s')['state'] == 'running'
    assert [(r['id'], r['phase']) for r in other.unsent()] == [(op.start_outbox, 'start')]
    again = Operation('volume_attach', 'req-s', 'h1', observer=journal)
    assert not journal.begin(again, {}, 'cast-1', notification=start)
    assert len(list(journal.unsent())) == 1        # the redelivery queued no second start


def test_outbox_keeps_what_the_broker_refused_and_sends_it_in_order(journal):
    notifier = FlakyNotifier()
    outbox = Outbox(journal, notifier)
    ctxt = aw_context.RequestContext(request_id='req-a', auth_token='never-stored')
    assert outbox.notify(ctxt, 'volume_attach', 'start', request_id='req-a')
    notifier.down = True
    assert not outbox.notify(ctxt, 'volume_attach', 'end', request_id='req-a')
    assert not outbox.notify(ctxt, 'volume_attach', 'start', request_id='req-b')
    assert outbox.flush() == 0  # still down: nothing lost, nothing sent
    notifier.down = False
    assert outbox.flush() == 2
    assert [(e, r) for e, r, _ in notifier.sent] == [
        ('volume_attach.start', 'req-a'), ('volume_attach.end', 'req-a'),
        ('volume_attach.start', 'req-b')]
    # the flushed context carries the ids, never the token
    assert notifier.sent[1][2].request_id == 'req-a'
    assert notifier.sent[1][2].auth_token is None
    assert outbox.flush() == 0


def test_outbox_survives_a_restart(tmp_path):
    notifier = FlakyNotifier()
    notifier.down = True
    first = Journal(str(tmp_path))
    Outbox(first, notifier).notify(aw_context.RequestContext(), 'volume_attach', 'error',
                                   fault={'step': 'x'}, request_id='req-z')
    first.close()
    notifier.down = False
    assert Outbox(Journal(str(tmp_path)), notifier).flush() == 1
    assert notifier.sent[0][:2] == ('volume_attach.error', 'req-z')


def test_a_resent_notification_keeps_its_event_id(journal):
    notifier = FlakyNotifier()
    outbox = Outbox(journal, notifier)
    outbox.notify(aw_context.RequestContext(), 'volume_attach', 'end', request_id='req-e')
    row = journal.outbox_row(1)
    assert notifier.events == [(row['event_id'], row['created_at'])]
    # a crash between publishing and marking it sent: it goes out again, as itself
    journal._write('UPDATE outbox SET sent_at=NULL')
    assert outbox.flush() == 1
    assert notifier.events[1] == notifier.events[0]


def test_a_poison_row_is_parked_and_the_rows_after_it_still_go_out(journal):
    notifier = FlakyNotifier()
    notifier.poison = {'req-poison'}
    outbox = Outbox(journal, notifier)
    ctxt = aw_context.RequestContext()
    assert not outbox.notify(ctxt, 'volume_attach', 'end', request_id='req-poison')
    notifier.down = True
    outbox.notify(ctxt, 'volume_attach', 'end', request_id='req-after')
    notifier.down = False
    for _ in range(3):
        outbox.flush()
    assert [r for _, r, _ in notifier.sent] == ['req-after']
    [parked] = journal.parked()
    assert parked['fields']['request_id'] == 'req-poison' and parked['attempts'] == 3
    assert 'TypeError' in parked['last_error']
    assert list(journal.unsent()) == []


def test_unwritable_journal_still_publishes_directly(tmp_path):
    notifier = FlakyNotifier()
    journal = Journal(str(tmp_path))
    journal.close()  # every write now fails
    with pytest.raises(exception.JournalError):
        journal.queue_notification('volume_attach', 'start', {}, None, {})
    Outbox(journal, notifier).notify(aw_context.RequestContext(), 'volume_attach', 'error',
                                     request_id='req-j')
    assert [e for e, _, _ in notifier.sent] == ['volume_attach.error']


def test_crash_hook_kills_the_process_right_after_the_step(tmp_path):
    script = textwrap.dedent('''
        import sys
        from attachworker.worker.journal import Journal
        from attachworker.worker.operation import Operation
        j = Journal(sys.argv[1])
        op = Operation('volume_attach', 'req-k', 'h', observer=j)
        j.begin(op, {})
        op.step('reserve', lambda: None)
        op.step('initialize_connection', lambda: None)
        print('not reached')
    ''')
    env = dict(os.environ, ATTACHWORKER_TEST_CRASH_AT='reserve:done')
    done = subprocess.run([sys.executable, '-c', script, str(tmp_path)], env=env,
                          capture_output=True, text=True)
    assert done.returncode == -9 and 'not reached' not in done.stdout
    record = Journal(str(tmp_path)).get('req-k')
    assert (record['last_step'], record['step_state']) == ('reserve', 'done')


def test_manage_journal_shows_parked_notifications_and_the_undo_stack(tmp_path):
    state = tmp_path / 'state'
    journal = Journal(str(state))
    notifier = FlakyNotifier()
    notifier.poison = {'req-poison'}
    outbox = Outbox(journal, notifier)
    outbox.notify(aw_context.RequestContext(), 'volume_attach', 'error',
                  request_id='req-poison')
    outbox.flush()
    outbox.flush()  # the third failure parks it
    op = Operation('volume_attach', 'req-stack', 'h1', observer=journal)
    journal.begin(op, {})
    op.step('reserve', lambda: None, undo=('unreserve', {'volume_id': 'vol-1'}))
    journal.close()
    config = tmp_path / 'manage.conf'
    config.write_text('[DEFAULT]\nstate_path = %s\n' % state)
    script = os.path.join(os.path.dirname(sys.executable), 'attachworker-manage')
    listing = subprocess.run([script, '--config-file', str(config), 'journal', 'list'],
                             capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    assert 'notification(s) parked' in listing.stdout
    assert 'req-poison' in listing.stdout and 'TypeError' in listing.stdout
    shown = subprocess.run([script, '--config-file', str(config), 'journal', 'show',
                            'req-stack'], capture_output=True, text=True)
    assert 'unreserve' in shown.stdout and 'vol-1' in shown.stdout and 'armed' in shown.stdout


def test_known_cast_sees_committed_casts_only(tmp_path):
    """A redelivery is acked on the strength of a journalled cast: never of one another
    thread is still writing (a kill before its COMMIT would lose the cast)."""
    import threading
    import time

    journal = Journal(str(tmp_path))
    gate = threading.Event()
    commit = journal._group._commit
    journal._group._commit = lambda: (gate.wait(10), commit())
    op = Operation('volume_attach', 'req-pending', 'h1', observer=journal)
    writer = threading.Thread(target=journal.begin, args=(op, {}, 'uid-pending'))
    writer.start()
    time.sleep(0.2)
    assert not journal.known_cast('uid-pending')
    gate.set()
    writer.join(10)
    assert journal.known_cast('uid-pending')
    journal.close()


def test_a_journal_that_cannot_be_opened_does_not_keep_its_owner_alive(tmp_path):
    """Else recovery of another process would take this one's operations for a live
    process's, and never recover them."""
    from attachworker.worker import locks
    state = tmp_path / 'state'
    state.mkdir()
    (state / 'journal.sqlite.writer').mkdir()  # its lock file cannot be opened
    owner = locks.process_identity()
    with pytest.raises(OSError):
        Journal(str(state), owner=owner)
    assert not locks.owner_alive(str(state), owner)

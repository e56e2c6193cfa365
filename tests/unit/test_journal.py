"""The journal and the outbox: what is on disk, and what gets published when."""
import os
import subprocess
import sys
import textwrap

import pytest

from attachworker import context as aw_context
from attachworker import exception
from attachworker.journal import Journal
from attachworker.journal import owner_alive
from attachworker.journal import process_identity
from attachworker.operation import Operation
from attachworker.outbox import Outbox


class FlakyNotifier:
    """Records what it publishes; refuses while ``down``."""

    def __init__(self):
        self.down = False
        self.sent = []

    def notify(self, ctxt, action, phase, fault=None, **fields):
        if self.down:
            return False
        self.sent.append(('%s.%s' % (action, phase), fields.get('request_id'), ctxt))
        return True


@pytest.fixture
def journal(tmp_path):
    j = Journal(str(tmp_path))
    yield j
    j.close()


def test_steps_are_on_disk_before_and_after_they_run(journal, tmp_path):
    op = Operation('volume_attach', 'req-1', 'h1', observer=journal)
    journal.begin(op, {'request_id': 'req-1'})
    op.step('attachment_create', lambda: {'id': 'att-1'})
    # a second connection (another process) sees it: it was committed
    other = Journal(str(tmp_path), owner='1:1')
    record = other.get('req-1')
    assert record['state'] == 'running'
    assert (record['last_step'], record['step_state']) == ('attachment_create', 'done')
    assert record['fields']['attachment_id'] == 'att-1'
    assert [(s['step'], s['state']) for s in other.steps(op.id)] == [
        ('attachment_create', 'started'), ('attachment_create', 'done')]


def test_journal_never_holds_secrets(journal):
    op = Operation('volume_attach', 'req-2', 'h1', observer=journal)
    journal.begin(op, aw_context.RequestContext(auth_token='tok-SECRET').redacted())
    op.step('connector', lambda: {'initiator': 'iqn.x', 'host': 'h1'})
    op.step('attachment_update', lambda: {'driver_volume_type': 'iscsi',
                                          'data': {'auth_password': 'chap-SECRET'}})
    with open(journal.path, 'rb') as f:
        data = f.read()
    wal = journal.path + '-wal'
    if os.path.exists(wal):
        with open(wal, 'rb') as f:
            data += f.read()
    assert b'tok-SECRET' not in data and b'chap-SECRET' not in data
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
    assert [o['request_id'] for o in journal.orphans()] == ['req-dead']
    assert journal.claim(orphan.id, '999999:1')
    assert not journal.claim(orphan.id, '999999:1')  # someone (we) took it already
    assert journal.orphans() == []


def test_process_identity_survives_pid_reuse():
    me = process_identity()
    assert owner_alive(me)
    pid, start = me.split(':')
    assert not owner_alive('%s:%d' % (pid, int(start) + 1))


def test_finish_queues_the_outcome_in_the_same_transaction(journal):
    op = Operation('volume_attach', 'req-3', 'h1', observer=journal)
    journal.begin(op, {})
    outbox_id = journal.finish(op.id, 'completed', op.fields, notification={
        'action': 'volume_attach', 'phase': 'end', 'fields': op.payload(), 'fault': None,
        'context': {'request_id': 'req-3'}})
    assert journal.get('req-3')['state'] == 'completed'
    assert [r['id'] for r in journal.unsent()] == [outbox_id]


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
        from attachworker.journal import Journal
        from attachworker.operation import Operation
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

"""Hostile input, trust and a failing journal (issue 8, findings 3, 7, 9 and 10).

Each case ends in exactly one terminal notification that says what is wrong, and
changes nothing it must not change.
"""
import time

import oslo_messaging as messaging
import pytest

from attachworker import context as aw_context
from attachworker import exception
from attachworker import rpc
from attachworker import virt
from attachworker.worker.journal import Journal
from tests.unit.conftest import CinderMock

GOOD = '8f0e3c4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b'
INSTANCE = {'uuid': GOOD, 'project_id': 'p-owner'}


def terminal(notifications):
    return [n for n in notifications() if not n[0].endswith('.start')]


# --- finding 9: a context is input too; unencodable text -------------------------------

class RawSerializer(rpc.RequestContextSerializer):
    """Sends the context dict exactly as given: what a hostile bus client can do."""

    def serialize_context(self, ctxt):
        return ctxt


def cast_raw(transport, ctxt_dict, method='attach_volume', **kwargs):
    client = messaging.get_rpc_client(
        transport, messaging.Target(topic=rpc.TOPIC, server='compute-unit'),
        serializer=RawSerializer())
    client.cast(ctxt_dict, method, **kwargs)


def wait_for(notifications, count, timeout=10):
    deadline = time.monotonic() + timeout
    while len(notifications()) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return notifications()


@pytest.mark.parametrize('bad', [{'request_id': {'a': 1}}, {'request_id': 42},
                                 {'user_id': ['x']}, {'roles': 'admin'},
                                 {'request_id': 'req-\ud800'},
                                 {'auth_token': {'nested': 'tok'}}],
                         ids=['dict-request-id', 'int-request-id', 'list-user', 'str-roles',
                              'surrogate', 'dict-token'])
def test_a_bad_context_gets_its_error_and_the_worker_goes_on(bad, server, cinder_mock, ctxt,
                                                             notifications):
    transport, _ = server
    cast_raw(transport, dict(ctxt.to_dict(), **bad), instance={'uuid': GOOD},
             volume_id=cinder_mock.volume_id, mountpoint='/dev/vdb')
    [(event, _, data, _)] = wait_for(notifications, 1)
    assert event == 'instance.volume_attach.error'
    assert data['fault']['step'] == 'validate'
    assert 'bad RPC context' in data['fault']['message']
    assert cinder_mock.calls() == []
    # what follows is still served, and the outbox is not wedged
    cast_raw(transport, ctxt.to_dict(), instance={'uuid': GOOD},
             volume_id=cinder_mock.volume_id, mountpoint='/dev/vdb')
    assert wait_for(notifications, 3)[-1][0] == 'instance.volume_attach.end'


@pytest.mark.parametrize('args', [dict(mountpoint='/dev/vd\ud800'),
                                  dict(instance={'uuid': GOOD, 'display_name': 'x\udcff'}),
                                  dict(volume_id='\ud800')])
def test_unencodable_text_is_refused_before_any_cinder_call(args, make_manager, cinder_mock,
                                                            ctxt, notifications):
    call = dict(instance={'uuid': GOOD}, volume_id=cinder_mock.volume_id,
                mountpoint='/dev/vdb')
    call.update(args)
    make_manager().attach_volume(ctxt, **call)
    [(event, _, data, message)] = terminal(notifications)
    assert event == 'instance.volume_attach.error'
    assert data['fault']['exception'] == 'InvalidInput'
    assert cinder_mock.calls() == []
    # the notification itself carries nothing that cannot be encoded
    str(message).encode('utf-8')
    assert '\ud800' not in str(data) and '\udcff' not in str(data)


@pytest.mark.parametrize('message', [
    {'method': 'attach_volume', 'args': ['not', 'a', 'dict']},
    {'method': 'attach_volume', 'args': {'ctxt': 1, 'volume_id': GOOD}},
    {'method': 'attach_volume', 'args': {}, 'version': 1.1},
    {'method': 'attach_volume', 'args': {}, 'version': 'abc'},
    {'method': 'attach_volume', 'args': {}, 'namespace': ['x']}],
    ids=['args-list', 'args-ctxt', 'version-float', 'version-text', 'namespace-list'])
def test_a_malformed_message_gets_its_error(message, global_conf, make_manager, ctxt,
                                            notifications):
    """Finding: oslo.messaging's dispatcher raised on these and no outcome was sent."""
    manager = make_manager()
    dispatcher = rpc.Dispatcher([manager], rpc.RequestContextSerializer(), manager.reject)

    class Incoming:
        def __init__(self):
            self.ctxt = ctxt.to_dict()
            self.message = message
    dispatcher.dispatch(Incoming())
    [(event, _, data, _)] = notifications()
    assert event == 'instance.volume_attach.error'
    assert data['fault']['step'] == 'rpc' and data['request_id'] == ctxt.request_id


# --- finding 10: trust ------------------------------------------------------------------

def test_only_the_rpc_methods_are_callable(server, cinder_mock, ctxt, notifications, caplog):
    transport, manager = server
    for method in ('reject', 'abort', '_attach', '_run', 'target'):
        cast_raw(transport, ctxt.to_dict(), method=method, method_name='attach_volume',
                 exc=None)
    cast_raw(transport, ctxt.to_dict(), instance={'uuid': GOOD},
             volume_id=cinder_mock.volume_id, mountpoint='/dev/vdb')
    published = wait_for(notifications, 2)
    # no forged .error for anyone: only the real cast's two notifications
    assert [e for e, _, _, _ in published] == ['instance.volume_attach.start',
                                               'instance.volume_attach.end']
    assert not manager.abort.is_set()
    assert caplog.text.count('NoSuchMethod') >= 5


@pytest.fixture
def admin_cinder(conf):
    import requests_mock

    from tests.unit.test_cinder_auth import SERVICE_PROJECT
    from tests.unit.test_cinder_auth import keystone_token
    from tests.unit.test_cinder_auth import use_password_auth
    with requests_mock.Mocker() as m:
        use_password_auth(conf, 'cinder')
        keystone_token(m, 'cinder-admin-token', SERVICE_PROJECT)
        yield CinderMock(m, project=SERVICE_PROJECT)


@pytest.mark.parametrize('instance', [{'uuid': GOOD},
                                      {'uuid': GOOD, 'project_id': 'someone-else'}],
                         ids=['no-project', 'other-project'])
def test_a_tokenless_cast_for_another_projects_volume_touches_nothing(
        instance, conf, make_manager, admin_cinder, notifications):
    admin_cinder.volume['os-vol-tenant-attr:tenant_id'] = 'p-owner'
    admin_cinder.reserve_for(GOOD)
    make_manager().attach_volume(aw_context.get_admin_context(), instance,
                                 admin_cinder.volume_id, '/dev/vdb',
                                 attachment_id=admin_cinder.attachment_id)
    [(event, _, data, _)] = terminal(notifications)
    assert event == 'instance.volume_attach.error'
    assert data['fault']['exception'] == 'NotTrusted'
    assert [c for c in admin_cinder.calls() if not c.startswith('GET')] == []
    assert virt.load_driver(conf).get_attachments(GOOD) == []


def test_a_tokenless_cast_for_the_instances_own_volume_attaches(conf, make_manager,
                                                                admin_cinder, notifications):
    admin_cinder.volume['os-vol-tenant-attr:tenant_id'] = 'p-owner'
    make_manager().attach_volume(aw_context.get_admin_context(), INSTANCE,
                                 admin_cinder.volume_id, '/dev/vdb')
    assert terminal(notifications)[-1][0] == 'instance.volume_attach.end'


def test_a_controller_attachment_of_another_volume_is_refused_untouched(
        make_manager, cinder_mock, ctxt, notifications):
    cinder_mock.att['instance'] = 'another-instance'
    make_manager().attach_volume(ctxt, INSTANCE, cinder_mock.volume_id, '/dev/vdb',
                                 attachment_id=cinder_mock.attachment_id)
    [(event, _, data, _)] = terminal(notifications)
    assert 'not for this cast' in data['fault']['message']
    assert [c for c in cinder_mock.calls() if not c.startswith('GET')] == []


@pytest.mark.parametrize('step', ['get_volume', 'check_attach', 'connector'])
def test_a_controller_attachment_is_released_when_a_later_step_fails(
        step, conf, make_manager, cinder_mock, ctxt, notifications):
    """Finding 2: released whatever step failed, not only after reserve_device."""
    cinder_mock.reserve_for(GOOD)
    if step == 'get_volume':
        cinder_mock.fail('GET', '/volumes/' + cinder_mock.volume_id, 503)
    elif step == 'check_attach':
        cinder_mock.volume['status'] = 'error'
    connector = None
    if step == 'connector':
        def connector():
            raise exception.ConnectorError(reason='no initiator')
    manager = make_manager(**({'connector': connector} if connector else {}))
    manager.attach_volume(ctxt, INSTANCE, cinder_mock.volume_id, '/dev/vdb',
                          attachment_id=cinder_mock.attachment_id)
    assert terminal(notifications)[-1][2]['fault']['step'] == step
    assert cinder_mock.att.get('deleted')


# --- finding 7: mode --------------------------------------------------------------------

def test_read_only_reaches_the_driver(conf, make_manager, cinder_mock, ctxt, notifications):
    make_manager().attach_volume(ctxt, INSTANCE, cinder_mock.volume_id, '/dev/vdb', 'ro')
    [record] = virt.load_driver(conf).get_attachments(GOOD)
    assert (record['mode'], record['flow']) == ('ro', 'attachments')
    assert record['attachment_id'] == cinder_mock.attachment_id


def test_read_only_below_3_54_is_refused_before_any_change(conf, make_manager, ctxt,
                                                           notifications):
    import requests_mock
    with requests_mock.Mocker() as m:
        old = CinderMock(m, max_version='3.50')
        make_manager().attach_volume(ctxt, INSTANCE, old.volume_id, '/dev/vdb', 'ro')
        data = terminal(notifications)[-1][2]
        assert 'needs Cinder microversion 3.54' in data['fault']['message']
        assert old.calls() == ['GET /volumes/VOL']


# --- finding 3: a failing journal -------------------------------------------------------

class FailingJournal(Journal):
    def __init__(self, state_path, **failures):
        super().__init__(state_path, owner='77:1')
        self.failures = failures

    def _maybe_fail(self, what):
        if self.failures.get(what, 0) > 0:
            self.failures[what] -= 1
            raise exception.JournalError(reason='disk I/O error (%s)' % what)

    def step_done(self, op, step, *args, **kwargs):
        super().step_done(op, step, *args, **kwargs)  # written... then the disk fails
        if step == self.failures.get('step_done_of'):
            self._maybe_fail('step_done')

    def undo_ran(self, op, entry, error):
        self._maybe_fail('undo_ran')
        super().undo_ran(op, entry, error)

    def mark_sent(self, outbox_id):
        self._maybe_fail('mark_sent')
        super().mark_sent(outbox_id)

    def finish(self, *args, **kwargs):
        self._maybe_fail('finish')
        return super().finish(*args, **kwargs)


def run_with(conf, make_manager, ctxt, cinder_mock, **failures):
    from attachworker.notifications import Notifier
    from attachworker.worker.outbox import Outbox
    journal = FailingJournal(conf.state_path, **failures)
    notifier = Notifier(messaging.get_notification_transport(conf, url='fake://'), conf.host,
                        driver='test')
    make_manager(outbox=Outbox(journal, notifier)).attach_volume(
        ctxt, INSTANCE, cinder_mock.volume_id, '/dev/vdb')
    return journal


def test_a_journal_error_after_a_step_still_undoes_it(conf, make_manager, cinder_mock, ctxt,
                                                      notifications):
    run_with(conf, make_manager, ctxt, cinder_mock, step_done=1,
             step_done_of='attachment_update', undo_ran=5)
    [(event, _, data, _)] = terminal(notifications)
    assert event == 'instance.volume_attach.error'
    assert data['fault']['exception'] == 'JournalError'
    # the attachment made before the failure is deleted, though no undo could be journalled
    assert cinder_mock.att.get('deleted')


def test_a_failing_mark_sent_never_causes_a_second_outcome(conf, make_manager, cinder_mock,
                                                           ctxt, notifications):
    journal = run_with(conf, make_manager, ctxt, cinder_mock, mark_sent=5)
    assert [e for e, _, _, _ in notifications()] == ['instance.volume_attach.start',
                                                     'instance.volume_attach.end']
    # left unsent, the resend later is the same event (same message_id)
    ids = {r['event_id'] for r in journal.unsent()}
    assert len(ids) == 2
    from attachworker.worker.outbox import Outbox
    resent = []

    class Recorder:
        def notify(self, ctxt, action, phase, fault=None, event=None, **fields):
            resent.append(event[0])
            return True
    Outbox(journal, Recorder()).flush()
    assert set(resent) == ids


def test_a_failing_finish_is_retried_and_never_leaves_the_operation_running(
        conf, make_manager, cinder_mock, ctxt, notifications):
    journal = run_with(conf, make_manager, ctxt, cinder_mock, finish=2)
    assert terminal(notifications)[-1][0] == 'instance.volume_attach.end'
    assert journal.list(limit=1)[0]['state'] == 'completed'


def test_an_outcome_the_journal_never_took_is_published_then_journalled_later(
        conf, make_manager, cinder_mock, ctxt, notifications):
    from attachworker.notifications import Notifier
    from attachworker.worker.outbox import Outbox
    journal = FailingJournal(conf.state_path, finish=3)
    notifier = Notifier(messaging.get_notification_transport(conf, url='fake://'), conf.host,
                        driver='test')
    manager = make_manager(outbox=Outbox(journal, notifier))
    manager.attach_volume(ctxt, INSTANCE, cinder_mock.volume_id, '/dev/vdb')
    # never withheld: published at once, though the journal refused it three times
    assert terminal(notifications)[-1][0] == 'instance.volume_attach.end'
    assert journal.list(limit=1)[0]['state'] == 'running'
    manager.retry_unjournalled()  # the next housekeeping round
    [op] = journal.list(limit=1)
    assert op['state'] == 'completed'
    assert list(journal.unsent()) == []  # recorded as sent: not published twice
    from attachworker.worker.journal_outbox import outcome_event_id
    assert [r['event_id'] for r in journal._read(
        "SELECT event_id FROM outbox WHERE phase='end'")] == [outcome_event_id(op['op_id'])]

"""extend_volume (RPC 1.3, a cast): Nova's ``volume-extended`` event, against a
requests-mock'ed Cinder and the fake virt driver.

The size is Cinder's (GET volume), never the cast's; the only change is the
driver's, with no undo; every failure is one ``.error`` naming its step.
"""
import oslo_messaging as messaging
import pytest

from attachworker import connector as aw_connector
from attachworker import context as aw_context
from attachworker import exception
from attachworker import rpcapi
from attachworker import virt
from attachworker.cinder import CinderAPI
from attachworker.manager import ComputeManager
from attachworker.worker.journal import Journal
from attachworker.worker.operation import Operation
from attachworker.worker.outbox import Outbox
from tests.unit.test_metrics import Delta
from tests.unit.test_metrics import ops
from tests.unit.test_metrics import step_count
from tests.unit.test_recovery import INSTANCE as RECOVERY_INSTANCE
from tests.unit.test_recovery import CrashingJournal
from tests.unit.test_recovery import Killed
from tests.unit.test_recovery import caller
from tests.unit.test_recovery import cloud  # noqa: F401 - a fixture
from tests.unit.test_recovery import notifier
from tests.unit.test_recovery import recover

INSTANCE = {'uuid': '8f0e3c4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b'}
GiB = 1024 ** 3


def mark_attached(conf, cinder_mock, instance=INSTANCE, size=2, on_host=True):
    """The volume attached to the instance at /dev/vdc, in Cinder (``size`` GiB,
    in-use) and, with ``on_host``, on the host."""
    cinder_mock.volume.update(status='in-use', size=size, attachments=[{
        'server_id': instance['uuid'], 'attachment_id': cinder_mock.attachment_id,
        'device': '/dev/vdc'}])
    if on_host:
        virt.load_driver(conf).attach_volume(
            None, {'driver_volume_type': 'iscsi', 'data': {}}, instance, '/dev/vdc',
            cinder_mock.volume_id, {'flow': 'attachments',
                                    'attachment_id': cinder_mock.attachment_id})
    return cinder_mock


@pytest.fixture
def attached(conf, cinder_mock):
    return mark_attached(conf, cinder_mock)


def events(notifications):
    return [e for e, _, _, _ in notifications()]


def size_on_host(conf, volume_id, instance=INSTANCE):
    [record] = [a for a in virt.load_driver(conf).get_attachments(instance['uuid'])
                if a['volume_id'] == volume_id]
    return record['size_bytes']


def test_extend_grows_the_disk_to_the_size_cinder_reports(conf, make_manager, attached,
                                                          ctxt, notifications):
    delta = Delta(ops('volume_extend', 'success'), ops('volume_extend', 'error'),
                  step_count('driver_extend', 'volume_extend'))
    make_manager().extend_volume(ctxt, INSTANCE, attached.volume_id, new_size=2)
    assert attached.calls() == ['GET /volumes/VOL']  # only read: Cinder has extended it
    assert events(notifications) == ['instance.volume_extend.start',
                                     'instance.volume_extend.end']
    start, end = notifications()[0][2], notifications()[-1][2]
    assert (start['new_size'], start['old_size']) == (None, None)
    assert (end['new_size'], end['old_size']) == (2, None)  # the fake knew no size yet
    assert (end['attachment_id'], end['mountpoint'], end['flow']) == (
        attached.attachment_id, '/dev/vdc', 'attachments')
    assert end['fault'] is None
    assert size_on_host(conf, attached.volume_id) == 2 * GiB
    assert delta() == [1, 0, 1]  # counted under action volume_extend

    attached.volume['size'] = 3
    make_manager().extend_volume(ctxt, INSTANCE, attached.volume_id)
    end = notifications()[-1][2]
    assert (end['new_size'], end['old_size']) == (3, 2)
    assert size_on_host(conf, attached.volume_id) == 3 * GiB


def test_the_size_is_read_from_cinder_not_taken_from_the_cast(conf, make_manager, attached,
                                                              ctxt, notifications, caplog):
    make_manager().extend_volume(ctxt, INSTANCE, attached.volume_id, new_size=7)
    assert events(notifications)[-1] == 'instance.volume_extend.end'
    assert notifications()[-1][2]['new_size'] == 2
    assert size_on_host(conf, attached.volume_id) == 2 * GiB
    assert 'The cast says volume %s is 7 GiB, Cinder says 2 GiB' % attached.volume_id \
        in caplog.text


@pytest.mark.parametrize('case', ['not_on_host', 'available', 'other_instance'])
def test_a_volume_not_attached_here_is_an_error_and_the_driver_is_not_asked(
        case, conf, make_manager, cinder_mock, ctxt, notifications):
    if case == 'not_on_host':  # Cinder says attached to the instance, this host has not it
        mark_attached(conf, cinder_mock, on_host=False)
        reason = 'it is not attached to instance %s on this host' % INSTANCE['uuid']
    elif case == 'available':
        mark_attached(conf, cinder_mock)
        cinder_mock.volume.update(status='available', attachments=[])
        reason = 'its status in Cinder is available, expected in-use'
    else:
        mark_attached(conf, cinder_mock)
        cinder_mock.volume['attachments'][0]['server_id'] = 'another-instance'
        reason = 'Cinder shows no attachment of it to instance %s' % INSTANCE['uuid']
    driver = virt.load_driver(conf)
    driver.extend_volume = lambda *a: pytest.fail('the driver was asked')
    make_manager(virt_driver=driver).extend_volume(ctxt, INSTANCE, cinder_mock.volume_id)
    fault = notifications()[-1][2]['fault']
    assert (fault['step'], fault['exception'], fault['code']) == (
        'check_extend', 'VolumeNotExtendable', 409)
    assert reason in fault['message']
    assert cinder_mock.calls() == ['GET /volumes/VOL']


def test_cinder_5xx_is_an_error_and_nothing_changes(conf, make_manager, attached, ctxt,
                                                   notifications):
    attached.fail('GET', '/volumes/' + attached.volume_id, 503)
    make_manager().extend_volume(ctxt, INSTANCE, attached.volume_id)
    fault = notifications()[-1][2]['fault']
    assert (fault['step'], fault['exception'], fault['code']) == (
        'get_volume', 'CinderUnavailable', 503)
    assert attached.calls() == ['GET /volumes/VOL']  # 503 is not retried; 500/504 are
    assert size_on_host(conf, attached.volume_id) is None


def test_a_driver_that_cannot_extend_is_refused_before_cinder_is_asked(
        conf, make_manager, attached, ctxt, notifications):
    driver = virt.load_driver(conf)
    driver.capabilities = dict(driver.capabilities, supports_extend_volume=False)
    make_manager(virt_driver=driver).extend_volume(ctxt, INSTANCE, attached.volume_id)
    fault = notifications()[-1][2]['fault']
    assert (fault['step'], fault['exception'], fault['code']) == (
        'check_driver', 'ExtendVolumeNotSupported', 409)
    assert attached.calls() == []
    # the contract's default refuses too, for a driver that claims it and has none
    with pytest.raises(exception.ExtendVolumeNotSupported):
        virt.VirtDriver.extend_volume(driver, None, None, INSTANCE, attached.volume_id, GiB)


def test_a_driver_failure_is_an_error_with_nothing_undone(conf, make_manager, attached, ctxt,
                                                          notifications, journal):
    driver = virt.load_driver(conf)

    def fails(*args):
        raise exception.VirtDriverError(reason='QEMU said no')
    driver.extend_volume = fails
    make_manager(virt_driver=driver).extend_volume(ctxt, INSTANCE, attached.volume_id)
    assert events(notifications) == ['instance.volume_extend.start',
                                     'instance.volume_extend.error']
    data = notifications()[-1][2]
    assert (data['fault']['step'], data['fault']['exception']) == ('driver_extend',
                                                                   'VirtDriverError')
    assert 'QEMU said no' in data['fault']['message'] and data['new_size'] == 2
    assert attached.calls() == ['GET /volumes/VOL']  # no undo: Cinder is left extended
    [op] = journal.list(limit=1)
    assert journal.stack(op['op_id']) == []


def test_a_shrink_is_refused_by_the_fake_driver_which_keeps_the_size(
        conf, make_manager, attached, ctxt, notifications):
    make_manager().extend_volume(ctxt, INSTANCE, attached.volume_id)
    # the size is in the driver's durable record: a new driver object reads it back
    assert size_on_host(conf, attached.volume_id) == 2 * GiB
    attached.volume['size'] = 1
    make_manager().extend_volume(ctxt, INSTANCE, attached.volume_id)
    fault = notifications()[-1][2]['fault']
    assert (fault['step'], fault['exception']) == ('driver_extend', 'VolumeNotExtendable')
    assert 'would shrink it' in fault['message']
    assert size_on_host(conf, attached.volume_id) == 2 * GiB
    with pytest.raises(exception.VolumeNotExtendable):
        virt.load_driver(conf).extend_volume(None, None, INSTANCE,
                                             '0e5e6e4c-0000-4000-8000-000000000000', GiB)


@pytest.mark.parametrize('bad, message', [
    ({'new_size': 'big'}, "new_size must be a positive number of GiB or null, got 'big'"),
    ({'new_size': True}, 'new_size must be a positive number of GiB'),
    ({'new_size': 0}, 'new_size must be a positive number of GiB'),
    ({'size': 2}, "unexpected arguments: 'size'"),
])
def test_a_malformed_cast_is_refused_before_any_cinder_call(bad, message, make_manager,
                                                            attached, ctxt, notifications):
    make_manager().extend_volume(ctxt, INSTANCE, attached.volume_id, **bad)
    fault = notifications()[-1][2]['fault']
    assert (fault['step'], fault['exception']) == ('validate', 'InvalidInput')
    assert message in fault['message']
    assert attached.calls() == []


def test_a_tokenless_cast_for_a_volume_of_another_project_touches_nothing(
        conf, make_manager, cloud, notifications):  # noqa: F811
    """No caller token: the [cinder] user acts, so the instance's project must own it."""
    mark_attached(conf, cloud, instance=RECOVERY_INSTANCE)
    cloud.volume['os-vol-tenant-attr:tenant_id'] = 'someone-else'
    tokenless = aw_context.RequestContext(auth_token=None, user_id='u',
                                          project_id=RECOVERY_INSTANCE['project_id'])
    make_manager().extend_volume(tokenless, RECOVERY_INSTANCE, cloud.volume_id)
    fault = notifications()[-1][2]['fault']
    assert (fault['step'], fault['exception']) == ('get_volume', 'NotTrusted')
    assert 'the volume belongs to another project' in fault['message']
    assert size_on_host(conf, cloud.volume_id, RECOVERY_INSTANCE) is None


# --- RPC ---------------------------------------------------------------------------------
def test_a_cap_below_1_3_refuses_the_cast_and_1_3_reaches_the_worker(
        global_conf, server, attached, ctxt, notifications):
    transport, _ = server
    global_conf.set_override('compute', '1.2', group='upgrade_levels')
    pinned = rpcapi.ComputeAPI(global_conf, transport)
    with pytest.raises(messaging.RPCVersionCapError) as refused:
        pinned.extend_volume(ctxt, 'compute-unit', INSTANCE, attached.volume_id, 2)
    assert (refused.value.version, refused.value.version_cap) == ('1.3', '1.2')
    assert pinned.client.can_send_version('1.2')  # reserve_block_device_name still goes
    assert notifications() == []  # nothing was sent

    global_conf.clear_override('compute', group='upgrade_levels')
    rpcapi.ComputeAPI(global_conf, transport).extend_volume(
        ctxt, 'compute-unit', INSTANCE, attached.volume_id, 2)
    from tests.unit.test_rpc import wait_for
    published = wait_for(notifications, 2)
    assert [e for e, _, _, _ in published] == ['instance.volume_extend.start',
                                               'instance.volume_extend.end']
    assert published[-1][2]['request_id'] == ctxt.request_id


def test_extend_volume_is_reachable_over_rpc_and_notifies_volume_extend():
    assert ComputeManager.RPC_METHODS['extend_volume'] == 'volume_extend'
    assert ComputeManager.target.version == rpcapi.RPC_API_VERSION == '1.3'


# --- recovery ------------------------------------------------------------------------------
def crash_extend(conf, crash_at, volume_id):
    dead = CrashingJournal(conf.state_path, crash_at)
    manager = ComputeManager(conf, CinderAPI(conf), virt.load_driver(conf),
                             Outbox(dead, notifier(conf)),
                             lambda: aw_connector.get_connector_properties(conf))
    try:
        manager.extend_volume(caller(), RECOVERY_INSTANCE, volume_id)
    except Killed:
        pass
    else:
        raise AssertionError('the cast never reached %s:%s' % crash_at)
    finally:
        dead.close()


@pytest.mark.parametrize('state, terminal', [('started', 'error'), ('done', 'end')])
def test_a_kill_during_the_driver_step_is_resolved_without_running_anything_again(
        state, terminal, conf, cloud, notifications):  # noqa: F811
    mark_attached(conf, cloud, instance=RECOVERY_INSTANCE)
    driver = virt.load_driver(conf)
    crash_extend(conf, ('driver_extend', state), cloud.volume_id)
    # started: killed before the driver was asked (its size stays unknown); done: after
    before = size_on_host(conf, cloud.volume_id, RECOVERY_INSTANCE)
    assert before == (None if state == 'started' else 2 * GiB)
    mark, notified = len(cloud.calls()), len(notifications())
    assert recover(conf) == {'completed' if terminal == 'end' else 'undone': 1}
    assert cloud.calls()[mark:] == []  # nothing to undo in Cinder, nothing re-read
    assert size_on_host(conf, cloud.volume_id, RECOVERY_INSTANCE) == before  # not re-run
    published = notifications()[notified:]
    assert [e for e, _, _, _ in published] == ['instance.volume_extend.%s' % terminal]
    data = published[0][2]
    if terminal == 'error':
        assert (data['fault']['step'], data['fault']['exception']) == ('recovery',
                                                                       'Interrupted')
        assert ('driver_extend (started); the operation was left as it was (it had '
                'nothing to undo)') in data['fault']['message']
    assert data['new_size'] == 2
    assert recover(conf) == {}
    assert driver.get_attachments(RECOVERY_INSTANCE['uuid'])  # still attached


def test_a_completed_extend_does_not_retire_an_earlier_failed_undo(conf):
    """Recovery retires a failed undo once a later operation on the same instance and
    volume completed; an extend changes nothing of the attachment, so it does not."""
    journal = Journal(conf.state_path)
    try:
        ids = {'instance_uuid': INSTANCE['uuid'], 'volume_id': 'b1207c3e-0000-4000-8000-1'}
        failed = Operation('volume_attach', 'req-attach', 'compute-unit')
        failed.update(**ids)
        journal.begin(failed, {})
        journal.finish(failed.id, 'undo_failed', failed.fields)
        [record] = journal.list(('undo_failed',))
        for action, retired in (('volume_extend', False), ('volume_detach', True)):
            later = Operation(action, 'req-' + action, 'compute-unit')
            later.update(**ids)
            journal.begin(later, {})
            journal.finish(later.id, 'completed', later.fields)
            assert journal.superseded(record) is retired, action
    finally:
        journal.close()


def test_attachworker_cast_has_an_extend_command():
    from attachworker.cmd import cast
    args = cast.build_parser([]).parse_args([
        'extend', '--host', 'h', '--instance', INSTANCE['uuid'], '--volume',
        'b1207c3e-2f4d-4a5b-9c6d-7e8f9a0b1c2d', '--new-size', '2', '--wait', '30'])
    assert (args.action, args.host, args.new_size, args.wait) == ('extend', 'h', 2, 30.0)

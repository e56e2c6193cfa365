"""``volume_attachment refresh`` (attachworker.refresh), against a requests-mock'ed
Cinder and the fake virt driver: the steps in Nova's order, the refusals that
change nothing, the undo before Cinder lets go of the old attachment, the finish
after, and a kill at every step boundary resolved by recovery.
"""
import json
import os
import pathlib

import pytest

from attachworker import connector as aw_connector
from attachworker import context as aw_context
from attachworker import exception
from attachworker import virt
from attachworker.cinder import CinderAPI
from attachworker.cmd import volume_refresh
from attachworker.manager import ComputeManager
from attachworker.worker.journal import Journal
from attachworker.worker.outbox import Outbox
from tests.unit.conftest import CHAP_SECRET
from tests.unit.test_extend import mark_attached
from tests.unit.test_notification_samples import _fix
from tests.unit.test_notification_samples import check
from tests.unit.test_recovery import INSTANCE
from tests.unit.test_recovery import CrashingJournal
from tests.unit.test_recovery import Killed
from tests.unit.test_recovery import cloud  # noqa: F401 - a fixture
from tests.unit.test_recovery import notifier
from tests.unit.test_recovery import recover

NEW = '0c6b6a3e-7f1d-4d2e-9b3a-5e4f6a7b8c9d'
STEPS = ['cinder_client', 'get_volume', 'check_refresh', 'connector', 'attachment_create',
         'attachment_delete', 'attachment_update', 'driver_refresh', 'attachment_complete']
WRITES = ['POST /attachments', 'DELETE /attachments/ATT', 'PUT /attachments/NEW',
          'POST /attachments/NEW/action:os-complete']


class NewAttachment:
    """The attachment Cinder makes for the refresh (the old one is cloud's ``ATT``)."""

    def __init__(self, cloud):  # noqa: F811
        self.cloud = cloud
        self.state = None  # reserved, attaching, attached, deleted
        url = '%s/attachments/%s' % (cloud.base, NEW)
        cloud.m.post('%s/attachments' % cloud.base, json=self._created)
        cloud.m.get(url, json=self._shown)
        cloud.m.put(url, json=self._updated)
        cloud.m.post(url + '/action', json=self._completed)
        cloud.m.delete(url, json=self._deleted)

    def _body(self):
        return {'id': NEW, 'volume_id': self.cloud.volume_id, 'status': self.state,
                'instance': INSTANCE['uuid'], 'attach_mode': 'rw', 'connection_info': {}}

    def _created(self, request, context):
        assert request.json()['attachment'].get('connector') is None  # blank: reserved
        self.state = 'reserved'
        return {'attachment': self._body()}

    def _shown(self, request, context):
        if self.state in (None, 'deleted'):
            context.status_code = 404
            return {'itemNotFound': {'message': 'gone', 'code': 404}}
        return {'attachment': self._body()}

    def _updated(self, request, context):
        self.state = 'attaching'
        flat = dict(self.cloud.connection_info['data'], target_portal='192.0.2.7:3260',
                    driver_volume_type='iscsi', attachment_id=NEW)
        return {'attachment': dict(self._body(), connection_info=flat)}

    def _completed(self, request, context):
        self.state = 'attached'
        context.status_code = 204

    def _deleted(self, request, context):
        self.state = 'deleted'
        return {}


@pytest.fixture
def refreshable(conf, cloud):  # noqa: F811
    mark_attached(conf, cloud, instance=INSTANCE)
    cloud.att.update(instance=INSTANCE['uuid'], status='attached')
    return NewAttachment(cloud)


def manager(conf, journal=None, driver=None):
    journal = journal or Journal(conf.state_path)
    return ComputeManager(conf, CinderAPI(conf), driver or virt.load_driver(conf),
                          Outbox(journal, notifier(conf)),
                          lambda: aw_connector.get_connector_properties(conf))


def refresh(conf, cloud, **kw):  # noqa: F811
    mgr = manager(conf, **kw)
    try:
        return mgr.refresh_connection(aw_context.get_admin_context(), INSTANCE['uuid'],
                                      cloud.volume_id)
    finally:
        mgr._journal.close()


def writes(cloud):  # noqa: F811
    return [c.replace(NEW, 'NEW') for c in cloud.calls()
            if not c.startswith('GET')]


def record(conf, cloud):  # noqa: F811
    [rec] = [a for a in virt.load_driver(conf).get_attachments(INSTANCE['uuid'])
             if a['volume_id'] == cloud.volume_id]
    return rec


def events(notifications):
    return [e for e, _, _, _ in notifications()]


def test_refresh_replaces_the_attachment_in_novas_order_and_gives_the_driver_the_new_info(
        conf, cloud, refreshable, notifications):  # noqa: F811
    op = refresh(conf, cloud)
    assert op.ended == ('completed', None)
    # the old connection is terminated (its attachment deleted) before the new is made
    assert writes(cloud) == WRITES
    assert (refreshable.state, cloud.att.get('deleted')) == ('attached', True)
    rec = record(conf, cloud)
    assert (rec['attachment_id'], rec['mountpoint'], rec['flow']) == (NEW, '/dev/vdc',
                                                                      'attachments')
    assert events(notifications) == ['instance.volume_refresh.start',
                                     'instance.volume_refresh.end']
    end = notifications()[-1]
    assert (end[2]['attachment_id'], end[2]['old_attachment_id']) == (NEW, cloud.attachment_id)
    for _, _, _, message in notifications():
        _fix(message, cloud)
        data = message['payload']['attachworker_object.data']
        if data.get('old_attachment_id'):
            data['old_attachment_id'] = '5d77a1b2-c3d4-4e5f-8a9b-0c1d2e3f4a5b'
            data['attachment_id'] = NEW
    check('instance-volume_refresh-start', notifications()[0][3])
    check('instance-volume_refresh-end', notifications()[1][3])


@pytest.mark.parametrize('setup, error, code', [
    ('not_on_host', 'VolumeNotRefreshable', 6),
    ('other_attachment', 'VolumeNotRefreshable', 6),
    ('not_in_cinder', 'VolumeNotRefreshable', 6),
    ('legacy', 'VolumeNotRefreshable', 6),
    ('unrecorded_flow', 'VolumeNotRefreshable', 6),
    ('driver_refuses', 'RefreshNotSupported', 1),
    ('running', 'InstanceNotStopped', 5),
    ('cannot_tell', 'InstanceNotStopped', 5),
    ('unsupported', 'RefreshNotSupported', 1),
])
def test_a_refused_refresh_changes_nothing(setup, error, code, conf, cloud,  # noqa: F811
                                           refreshable, notifications):
    driver = virt.load_driver(conf)
    if setup == 'not_on_host':
        driver.detach_volume(None, INSTANCE, None, cloud.volume_id)
    elif setup == 'other_attachment':
        cloud.volume['attachments'][0]['attachment_id'] = NEW
    elif setup == 'not_in_cinder':
        cloud.volume.update(attachments=[])
    elif setup == 'legacy':
        driver.detach_volume(None, INSTANCE, None, cloud.volume_id)
        driver.attach_volume(None, {'driver_volume_type': 'iscsi', 'data': {}}, INSTANCE,
                             '/dev/vdc', cloud.volume_id, {'flow': 'legacy'})
    elif setup == 'unrecorded_flow':  # attached before records existed
        driver.detach_volume(None, INSTANCE, None, cloud.volume_id)
        driver.attach_volume(None, {'driver_volume_type': 'iscsi', 'data': {}}, INSTANCE,
                             '/dev/vdc', cloud.volume_id)
    elif setup == 'driver_refuses':  # e.g. libvirt and a block disk
        def no(instance_uuid, volume_id):
            raise exception.RefreshNotSupported(volume_id=volume_id, reason='block disk')
        driver.check_refresh = no
    elif setup in ('running', 'cannot_tell'):
        driver.instance_running = lambda uuid: True if setup == 'running' else None
    else:
        driver.capabilities = dict(driver.capabilities, supports_refresh_connection=False)
    before = virt.load_driver(conf).get_attachments(INSTANCE['uuid'])
    op = refresh(conf, cloud, driver=driver)
    state, exc = op.ended
    assert (state, type(exc).__name__) == ('undone', error), exc  # nothing to undo
    assert volume_refresh.exit_code(exc) == code
    assert writes(cloud) == []  # Cinder was only read
    assert virt.load_driver(conf).get_attachments(INSTANCE['uuid']) == before
    assert events(notifications)[-1] == 'instance.volume_refresh.error'
    assert notifications()[-1][2]['fault']['exception'] == error


def test_cinder_refusing_to_let_go_of_the_old_attachment_deletes_the_new_one(
        conf, cloud, refreshable, notifications):  # noqa: F811
    cloud.fail('DELETE', '/attachments/' + cloud.attachment_id, 409)
    op = refresh(conf, cloud)
    assert op.ended[0] == 'undone'
    assert (refreshable.state, cloud.att.get('deleted')) == ('deleted', None)
    assert record(conf, cloud)['attachment_id'] == cloud.attachment_id  # as it was
    assert notifications()[-1][2]['fault']['step'] == 'attachment_delete'


def test_an_ambiguous_failure_of_the_create_leaves_the_old_attachment_alone(
        conf, cloud, refreshable, notifications):  # noqa: F811
    cloud.fail('POST', '/attachments', 503)
    op = refresh(conf, cloud)
    assert op.ended[0] == 'undone'
    assert cloud.att.get('deleted') is None
    assert record(conf, cloud)['attachment_id'] == cloud.attachment_id


def test_a_failure_after_cinder_let_go_is_finished_by_recovery_not_undone(
        conf, cloud, refreshable, notifications):  # noqa: F811
    """Once the old attachment is deleted there is no way back: the new one is kept
    (the volume stays reserved for the instance) and recovery completes it."""
    cloud.fail('PUT', '/attachments/' + NEW, 503)
    op = refresh(conf, cloud)
    assert op.ended[0] == 'undo_failed'
    assert (refreshable.state, cloud.att.get('deleted')) == ('reserved', True)
    assert volume_refresh.exit_code(op.ended[1]) == 1
    assert notifications()[-1][2]['fault']['step'] == 'attachment_update'
    cloud.m.put('%s/attachments/%s' % (cloud.base, NEW), json=refreshable._updated)
    assert recover(conf) == {'completed': 1}
    assert refreshable.state == 'attached'
    assert record(conf, cloud)['attachment_id'] == NEW
    assert recover(conf) == {}


def crash_refresh(conf, crash_at, volume_id):
    dead = CrashingJournal(conf.state_path, crash_at)
    try:
        manager(conf, journal=dead).refresh_connection(
            aw_context.get_admin_context(), INSTANCE['uuid'], volume_id)
    except Killed:
        pass
    else:
        raise AssertionError('the refresh never reached %s:%s' % crash_at)
    finally:
        dead.close()


# every boundary but the commit's done (after it nothing is left to recover)
BOUNDARIES = [(step, state) for step in STEPS for state in ('started', 'done')][:-1]


@pytest.mark.parametrize('step, state', BOUNDARIES)
def test_a_kill_at_any_step_boundary_ends_refreshed_or_as_it_was(
        step, state, conf, cloud, refreshable, notifications):  # noqa: F811
    crash_refresh(conf, (step, state), cloud.volume_id)
    counts = recover(conf)
    rec = record(conf, cloud)
    if rec['attachment_id'] == NEW or cloud.att.get('deleted'):
        # past the point of no return: finished, never half done
        assert counts == {'completed': 1}, counts
        assert (rec['attachment_id'], refreshable.state) == (NEW, 'attached')
        assert cloud.att.get('deleted') is True
    else:
        assert counts == {'undone': 1}, counts
        assert rec['attachment_id'] == cloud.attachment_id
        assert refreshable.state in (None, 'deleted')  # no second attachment left
    assert recover(conf) == {}
    terminal = [e for e in events(notifications) if not e.endswith('.start')]
    assert len(terminal) == 1 and terminal[0].startswith('instance.volume_refresh.')


def test_read_connector_checks_the_file_like_nova_manage(tmp_path):
    own = {'host': 'compute-unit', 'initiator': 'iqn.x'}
    with pytest.raises(volume_refresh._Refused) as missing:
        volume_refresh.read_connector(str(tmp_path / 'nope.json'), own)
    bad = tmp_path / 'bad.json'
    bad.write_text('{not json')
    with pytest.raises(volume_refresh._Refused) as unreadable:
        volume_refresh.read_connector(str(bad), own)
    bad.write_text('["a list"]')
    with pytest.raises(volume_refresh._Refused) as shapeless:
        volume_refresh.read_connector(str(bad), own)
    bad.write_text(json.dumps(dict(own, host='compute-other')))
    with pytest.raises(volume_refresh._Refused) as elsewhere:
        volume_refresh.read_connector(str(bad), own)
    assert [e.value.code for e in (missing, unreadable, shapeless, elsewhere)] == [2, 3, 3, 7]
    assert 'compute-other' in str(elsewhere.value)
    bad.write_text(json.dumps(dict(own, ip='192.0.2.9')))
    assert volume_refresh.read_connector(str(bad), own)['ip'] == '192.0.2.9'


def test_exit_codes_follow_nova_manage():
    assert volume_refresh.exit_code(None) == 0
    assert volume_refresh.exit_code(exception.InstanceNotFound(instance_uuid='x')) == 4
    assert volume_refresh.exit_code(exception.CinderUnavailable(reason='x')) == 1


def test_the_error_matches_its_sample(conf, cloud, refreshable, notifications):  # noqa: F811
    cloud.fail('DELETE', '/attachments/' + cloud.attachment_id, 409)
    refresh(conf, cloud)
    error = notifications()[-1][3]
    _fix(error, cloud)
    data = error['payload']['attachworker_object.data']
    data.update(old_attachment_id='5d77a1b2-c3d4-4e5f-8a9b-0c1d2e3f4a5b', attachment_id=NEW)
    data['fault']['message'] = data['fault']['message'].replace(cloud.attachment_id, '<old>')
    check('instance-volume_refresh-error', error)


def test_no_secret_of_the_new_connection_reaches_journal_log_or_notification(
        conf, cloud, refreshable, notifications, caplog):  # noqa: F811
    caplog.set_level('DEBUG')
    assert refresh(conf, cloud).ended == ('completed', None)
    stored = b''.join(p.read_bytes() for p in pathlib.Path(conf.state_path).rglob('*')
                      if p.is_file())
    for label, text in (('journal and driver state', stored.decode('utf-8', 'replace')),
                        ('log', caplog.text), ('notifications', repr(notifications()))):
        assert CHAP_SECRET not in text, label


@pytest.mark.parametrize('content', [
    '{"host": "compute-unit", "initiator": 42}',         # a number where a name goes
    '{"host": "compute-unit", "ip": NaN}',               # not JSON's, Python's
    '{"host": "compute-unit", "x": {"nested": 1}}',      # no objects in a connector
    '{"host": "compute-unit", "wwpns": [1, 2]}',
    '[' * 100000 + ']' * 100000,                         # deep enough to blow the stack
    '{"host": "compute-unit", "pad": "%s"}' % ('x' * 70000),
])
def test_a_connector_file_with_odd_values_is_refused_before_anything(tmp_path, content):
    path = tmp_path / 'c.json'
    path.write_text(content)
    with pytest.raises(volume_refresh._Refused) as refused:
        volume_refresh.read_connector(str(path), {'host': 'compute-unit',
                                                  'initiator': 'iqn.x', 'ip': '192.0.2.1',
                                                  'wwpns': ['50:01']})
    assert refused.value.code == 3


def test_a_fifo_is_not_read(tmp_path):
    fifo = tmp_path / 'fifo'
    os.mkfifo(fifo)
    with pytest.raises(volume_refresh._Refused) as refused:
        volume_refresh.read_connector(str(fifo), {'host': 'compute-unit'})
    assert refused.value.code == 3


def test_a_detach_after_an_unfinished_refresh_releases_the_new_attachment(
        conf, cloud, refreshable, notifications):  # noqa: F811
    """The refresh stopped past the point of no return; the volume was detached from
    the host since: its finish releases the new attachment instead of completing it."""
    cloud.fail('PUT', '/attachments/' + NEW, 503)
    assert refresh(conf, cloud).ended[0] == 'undo_failed'
    virt.load_driver(conf).detach_volume(None, INSTANCE, None, cloud.volume_id)
    assert recover(conf) == {'completed': 1}
    assert (refreshable.state, cloud.att.get('deleted')) == ('deleted', True)
    assert recover(conf) == {}


def test_a_delete_refused_on_its_retry_after_doing_the_work_is_not_definite(
        conf, cloud, refreshable, notifications):  # noqa: F811
    """The first DELETE deleted the old attachment but its answer was a 500; the retry
    was refused: the old attachment is gone, so the refresh goes on, never undone."""
    tries = []

    def flaky(request, context):
        tries.append(1)
        cloud.att['deleted'] = True
        context.status_code = 500 if len(tries) == 1 else 409
        return {'computeFault' if len(tries) == 1 else 'badRequest':
                {'message': 'x', 'code': context.status_code}}
    cloud.m.delete('%s/attachments/%s' % (cloud.base, cloud.attachment_id), json=flaky)
    op = refresh(conf, cloud)
    assert len(tries) == 2
    assert op.ended[0] == 'completed', op.ended
    assert refreshable.state == 'attached'
    assert record(conf, cloud)['attachment_id'] == NEW

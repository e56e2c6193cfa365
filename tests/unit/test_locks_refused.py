"""Host locks the kernel refuses after the start-up probe (ENOLCK, EMFILE...).

The cast ends at once with its ``.error``, and nothing of it runs without its locks,
its undos included (a process that holds them may be attaching that volume): they
are recorded failed, and the periodic round runs them once the locks can be taken.
"""
import errno
import threading

import pytest

from attachworker import connector as aw_connector
from attachworker import exception
from attachworker import virt
from attachworker.cinder import CinderAPI
from attachworker.manager import ComputeManager
from attachworker.worker import locks
from attachworker.worker.journal import Journal
from attachworker.worker.outbox import Outbox
from tests.unit.test_recovery import INSTANCE
from tests.unit.test_recovery import caller
from tests.unit.test_recovery import cloud  # noqa: F401 - a fixture
from tests.unit.test_recovery import notifier
from tests.unit.test_recovery import recover


def refuse(monkeypatch, only=None):
    """The kernel refuses the lock of every name (or of the name ``only``)."""
    real, refused = locks._locked, []

    def locked(path, byte):
        if only is None or byte == locks._byte(only):
            refused.append(byte)
            raise OSError(errno.ENOLCK, 'No locks available')
        return real(path, byte)
    monkeypatch.setattr(locks, '_locked', locked)
    return refused


def manager(conf, journal):
    return ComputeManager(conf, CinderAPI(conf), virt.load_driver(conf),
                          Outbox(journal, notifier(conf)),
                          lambda: aw_connector.get_connector_properties(conf))


@pytest.mark.parametrize('refused_name', [None, 'volume'])
def test_refused_locks_end_the_cast_and_leave_its_undo_to_the_round(
        refused_name, cloud, conf, notifications, monkeypatch):  # noqa: F811
    cloud.reserve_for(INSTANCE['uuid'])
    only = None if refused_name is None else 'volume-%s' % cloud.volume_id
    refused = refuse(monkeypatch, only)
    journal = Journal(conf.state_path, owner='1:1')
    worker = manager(conf, journal)
    worker.attach_volume(caller(), INSTANCE, cloud.volume_id, '/dev/vdb',
                         attachment_id=cloud.attachment_id)
    assert refused
    assert cloud.calls() == []  # nothing ran without the locks, the undo included
    events = notifications()
    assert [e for e, _, _, _ in events] == ['instance.volume_attach.start',
                                            'instance.volume_attach.error']
    fault = events[-1][2]['fault']
    assert fault['exception'] == 'LocksUnavailable' and fault['step'] == 'locks'
    assert locks.lock_path(conf.state_path) in fault['message']
    assert 'No locks available' in fault['message']
    assert '(undo failed: release_attachment)' in fault['message']
    assert journal.get(caller().request_id)['state'] == 'undo_failed'
    assert not virt.load_driver(conf).get_attachments(INSTANCE['uuid'])
    if refused_name is None:  # a call that needs the instance's lock: refused by name
        with pytest.raises(exception.LocksUnavailable):
            worker.reserve_block_device_name(caller(), INSTANCE, cloud.volume_id)
    else:  # the instance's lock, taken first, was let go
        taken = threading.Event()

        def take():
            with locks.instance_lock(conf.state_path, INSTANCE['uuid']):
                taken.set()
        threading.Thread(target=take, daemon=True).start()
        assert taken.wait(10)
    journal.close()
    # the round cannot take the locks either: the undo waits for the next one
    assert recover(conf) == {'retry': 1} and cloud.calls() == []
    monkeypatch.undo()
    assert recover(conf) == {'undone': 1}
    assert cloud.calls() == ['GET /attachments/ATT', 'DELETE /attachments/ATT']
    assert cloud.volume['status'] == 'available'
    # no second outcome: the .cleanup says the undo the .error named as failed ran
    assert [e for e, _, _, _ in notifications()][2:] == ['instance.volume_attach.cleanup']
    assert recover(conf) == {}


def test_an_operations_locks_are_taken_instance_first(conf, monkeypatch):
    """The one lock order, whoever takes both (the pipeline, recovery): two holders
    never each wait on the other."""
    real, order = locks._taken, []
    monkeypatch.setattr(locks, '_taken',
                        lambda state_path, name: (order.append(name),
                                                  real(state_path, name))[1])
    with locks.instance_and_volume(conf.state_path, 'i-1', 'v-1'):
        pass
    with locks.instance_and_volume(conf.state_path, None, None):
        pass
    assert order == ['instance-i-1', 'volume-v-1', 'instance-none', 'volume-none']

"""A power cut (ATTACHWORKER_TEST_CRASH_AT=<step>:<state>:lost): the record of that
boundary never reaches the disk, nor the rest of its open batch; a record that does
not wait is lost after its step acted. Recovery goes by what the disk holds: an
earlier boundary, whose undos it runs, and nothing is left behind.
"""
import pytest

from attachworker import virt
from tests.unit.test_attach_pipeline import FAILURES
from tests.unit.test_recovery import ATT_STEPS
from tests.unit.test_recovery import DEL
from tests.unit.test_recovery import INSTANCE
from tests.unit.test_recovery import LEGACY_STEPS
from tests.unit.test_recovery import TERMINATE
from tests.unit.test_recovery import UNRESERVE
from tests.unit.test_recovery import calls_after
from tests.unit.test_recovery import cloud  # noqa: F401 - a fixture
from tests.unit.test_recovery import crash
from tests.unit.test_recovery import recover


def list_as_cinder_would(cloud):  # noqa: F811
    """GET /attachments?volume_id= lists the attachment once created, until deleted."""
    cloud.m.get('%s/attachments' % cloud.base, json=lambda r, c: {'attachments': [
        cloud._attachment()] if cloud.att['instance'] and not cloud.att.get('deleted')
        else []})


def undone_by_an_earlier_record(conf, notifications, notified, lost):
    """One .error, naming a boundary before the one lost (``lost``: how the fault
    would name it); the host holds nothing; nothing is left for another round."""
    published = notifications()[notified:]
    assert [e for e, _, _, _ in published] == ['instance.volume_attach.error']
    assert lost not in published[0][2]['fault']['message']
    assert not virt.load_driver(conf).get_attachments(INSTANCE['uuid'])
    assert recover(conf) == {}


#: (flow, step, state) -> the Cinder calls of the recovery after a power cut just
#: before that record's fsync (ATTACHWORKER_TEST_CRASH_AT=<step>:<state>:lost): the
#: record is lost, and with it the open batch (an end the operation still owed); a
#: step's end lost means the step acted, and its start (if it armed) is what is left
LOOKUP = ['GET /attachments?volume_id=VOL', 'DELETE /attachments/ATT']
LOST = {(flow, step, state): [] for flow, steps in (('attachments', ATT_STEPS),
                                                    ('legacy', LEGACY_STEPS))
        for step in steps for state in ('started', 'done')}
LOST.update({
    # the create ran, its attachment id is lost: found by instance, as if no answer came
    ('attachments', 'attachment_create', 'done'): LOOKUP,
    # the create's end (the rearm) was owed: lost with the batch, or committed by then
    ('attachments', 'attachment_update', 'started'): (LOOKUP, DEL),
    ('attachments', 'attachment_update', 'done'): DEL,
    ('attachments', 'driver_attach', 'started'): DEL,
    ('attachments', 'driver_attach', 'done'): DEL,
    ('attachments', 'attachment_complete', 'started'): DEL,
    # the commit lost: nobody was told, and the complete's own undo goes first
    ('attachments', 'attachment_complete', 'done'): DEL + ['GET /attachments/ATT'],
    ('legacy', 'reserve', 'done'): UNRESERVE,
    ('legacy', 'initialize_connection', 'started'): UNRESERVE,
    ('legacy', 'initialize_connection', 'done'): TERMINATE + UNRESERVE,
    ('legacy', 'driver_attach', 'started'): TERMINATE + UNRESERVE,
    ('legacy', 'driver_attach', 'done'): TERMINATE + UNRESERVE,
    ('legacy', 'attach', 'started'): TERMINATE + UNRESERVE,
    ('legacy', 'attach', 'done'): ['POST /volumes/VOL/action:os-detach'] + TERMINATE +
    UNRESERVE,
})


@pytest.mark.parametrize('case', sorted(LOST), ids=lambda c: '%s-%s-%s' % c)
def test_a_record_lost_in_a_power_cut_is_undone_as_what_the_disk_holds(
        case, conf, cloud, notifications):  # noqa: F811
    flow, step, state = case
    conf.set_override('attach_flow', flow, group='cinder')
    list_as_cinder_would(cloud)
    crash(conf, (step, state, 'lost'), volume_id=cloud.volume_id)
    mark, notified = len(cloud.calls()), len(notifications())
    assert recover(conf) == {'undone': 1}
    expected = LOST[case]
    assert calls_after(cloud, mark) in (expected if isinstance(expected, tuple) else
                                        (expected,))
    assert bool(cloud.att.get('deleted')) == bool(cloud.att['instance'])  # created: gone
    # the record was lost: recovery went by an earlier one
    undone_by_an_earlier_record(conf, notifications, notified, 'step %s (%s)' % case[1:])


CONTROLLER_STEPS = ['cinder_client', 'check_reservation', 'get_volume', 'check_attach',
                    'connector', 'reserve_device', 'attachment_update', 'driver_attach',
                    'attachment_complete']


@pytest.mark.parametrize('step', CONTROLLER_STEPS)
@pytest.mark.parametrize('state', ['started', 'done'])
def test_a_power_cut_never_leaves_a_controller_reservation_behind(
        step, state, conf, cloud, notifications):  # noqa: F811
    """A controller-made attachment, a record lost at every boundary: whatever the disk
    kept (a start that did not wait is lost after its step acted), recovery releases
    the reservation, the host holds nothing and one .error names an earlier boundary."""
    cloud.reserve_for(INSTANCE['uuid'])
    list_as_cinder_would(cloud)
    crash(conf, (step, state, 'lost'), volume_id=cloud.volume_id,
          attachment_id=cloud.attachment_id)
    acted = cloud.calls()
    notified = len(notifications())
    assert recover(conf) == {'undone': 1}
    # the cut came where it was asked: the update's start does not wait, so lost, it
    # is lost after the update ran; at any earlier boundary, the update never ran
    after = CONTROLLER_STEPS.index(step) >= CONTROLLER_STEPS.index('attachment_update')
    assert ('PUT /attachments/ATT' in acted) == after
    assert cloud.att.get('deleted') and cloud.volume['status'] == 'available'
    assert not virt.load_driver(conf).reservations()
    undone_by_an_earlier_record(conf, notifications, notified, 'step %s (%s)' % (step, state))


@pytest.mark.parametrize('case', sorted(FAILURES))
def test_a_power_cut_that_loses_a_failure_is_undone_as_what_the_disk_holds(
        case, conf, cloud, notifications):  # noqa: F811
    """A step failed, and its failure record (which may drop an undo: a definite
    refusal) never reached the disk: recovery replays the stack as the disk has it,
    so an undo the failure dropped runs anyway, harmlessly, and nothing is left."""
    flow, method, suffix, action, status, _, step, _ = FAILURES[case]
    conf.set_override('attach_flow', flow, group='cinder')
    list_as_cinder_would(cloud)
    cloud.fail(method, suffix.replace('VOL', cloud.volume_id).replace(
        'ATT', cloud.attachment_id), status, action)
    crash(conf, (step, 'failed', 'lost'), volume_id=cloud.volume_id)
    notified = len(notifications())
    assert recover(conf) == {'undone': 1}
    assert bool(cloud.att.get('deleted')) == bool(cloud.att['instance'])  # created: gone
    undone_by_an_earlier_record(conf, notifications, notified, '(failed)')

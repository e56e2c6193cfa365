"""A conformance suite shaped like tempest's volume attach tests (issue 11, item 5).

One test per tempest case, named after it; the worker is the compute host (casts and
calls through rpcapi, the controller's side of tests/harness.py), the real Keystone +
Cinder of tools/local-cloud the rest. Where tempest asks Nova's API (a server's
volume attachments), these ask Cinder's (its attachments, filtered by instance) and
the host's own record; every outcome is judged by what Cinder reports.

tempest has no test of its own for detaching one of two servers from a multiattach
volume: its ``AttachVolumeMultiAttachTest._detach_multiattach_volume`` does it inside
``test_list_get_volume_attachments_multiattach`` (below) and
``test_resize_server_with_multiattached_volume`` (no resize here);
test_multiattach.py has it on one host, on two hosts and on two QEMU guests.
"""
import functools
import re
import uuid

from cinderclient import exceptions as cinder_exc
from keystoneauth1 import session as ks_session
import oslo_messaging as messaging
import pytest

from tests.integration import test_extend
from tests.integration.conftest import CLOUD_HOME
from tests.integration.conftest import caller_context
from tests.integration.conftest import cinder_db
from tests.integration.conftest import cinder_for
from tests.integration.test_multiattach import cinder_says
from tests.integration.test_multiattach import on_host

API_LOG = CLOUD_HOME / 'logs' / 'cinder-api.log'


def cast(ctl, worker, method, session, server, volume_id, **kwargs):
    """The outcome ('end'/'error') and its payload; ``server``: an instance uuid."""
    ctxt = caller_context(session)
    instance = {'uuid': server, 'project_id': ctxt.project_id}
    getattr(ctl.api, method + '_volume')(ctxt, worker.host, instance, volume_id, **kwargs)
    events = ctl.outcomes([ctxt.request_id], 60).get(ctxt.request_id, [])
    assert events and events[-1].endswith(('.end', '.error')), (events, worker.logs()[-3000:])
    return (events[-1].rsplit('.', 1)[1],
            ctl.notes(ctxt.request_id)[-1]['payload']['attachworker_object.data'])


def attachments_of(session, server):
    """What tempest's list_volume_attachments(server) is here: Cinder's attachments of
    the instance, as its owner sees them."""
    return {a.id: a for a in cinder_for(session).attachments.list(
        search_opts={'instance_id': server})}


def detach_multiattach(ctl, worker, sessions, admin_cinder, volume_id, server):
    """tempest's _detach_multiattach_volume: in-use after it while others remain."""
    left = len(admin_cinder.volumes.get(volume_id).attachments) - 1
    assert cast(ctl, worker, 'detach', sessions['demo'], server, volume_id)[0] == 'end'
    status, attached, _ = cinder_says(admin_cinder, volume_id)
    assert (status, len(attached)) == ('in-use' if left else 'available', left)
    assert server not in attached


def test_attach_detach_volume(make_worker, controller, volumes, sessions, admin_cinder):
    """tempest.api.compute.volumes.test_attach_volume.AttachVolumeTestJSON
    .test_attach_detach_volume: attached, the volume is in-use with one attachment to
    the server that stays across a stop/start (here: of the worker); detached, it is
    available with no attachment, and the host has no disk of it."""
    worker = make_worker()
    ctl = controller(worker)
    (vid,) = volumes.make()
    server = str(uuid.uuid4())
    result, data = cast(ctl, worker, 'attach', sessions['demo'], server, vid)
    assert result == 'end', data
    worker.stop()
    worker.start()
    status, attached, records = cinder_says(admin_cinder, vid)
    assert (status, list(attached), records) == ('in-use', [server], {server: 'attached'})
    assert attached[server]['attachment_id'] == data['attachment_id']
    assert on_host(worker, server)[vid]['attachment_id'] == data['attachment_id']

    assert cast(ctl, worker, 'detach', sessions['demo'], server, vid)[0] == 'end'
    assert cinder_says(admin_cinder, vid) == ('available', {}, {})
    assert on_host(worker, server) == {}


def test_list_get_volume_attachments(make_worker, controller, volumes, sessions,
                                     admin_cinder):
    """tempest.api.compute.volumes.test_attach_volume.AttachVolumeTestJSON
    .test_list_get_volume_attachments: the server lists exactly the attachments made
    (1, then 2); each one shown names the server, its volume and its id; each volume
    is available once detached."""
    worker = make_worker()
    ctl = controller(worker)
    server = str(uuid.uuid4())
    made = {}
    for vid in volumes.make(2):
        result, data = cast(ctl, worker, 'attach', sessions['demo'], server, vid)
        assert result == 'end', data
        made[data['attachment_id']] = vid
        assert set(attachments_of(sessions['demo'], server)) == set(made)
    demo = cinder_for(sessions['demo'])
    for attachment_id, vid in made.items():
        shown = demo.attachments.show(attachment_id)
        assert (shown.instance, shown.volume_id, shown.id, shown.status) == (
            server, vid, attachment_id, 'attached')
        assert cast(ctl, worker, 'detach', sessions['demo'], server, vid)[0] == 'end'
        assert admin_cinder.volumes.get(vid).status == 'available'
    assert attachments_of(sessions['demo'], server) == {}


def test_attach_attached_volume_to_same_server(make_worker, controller, volumes, sessions,
                                               admin_cinder):
    """tempest.api.compute.volumes.test_attach_volume_negative.AttachVolumeNegativeTest
    .test_attach_attached_volume_to_same_server: a second attach is refused. Cinder 29
    would take it (it allows a second attachment to the same instance, for live
    migration: bug 1694530), so the refusal is the host's, as Nova's is: its
    reserve_block_device_name call says VolumeAlreadyAttached (Nova: InvalidVolume,
    400); a repeated cast changes nothing. Cinder keeps the one attachment."""
    worker = make_worker()
    ctl = controller(worker)
    (vid,) = volumes.make()
    server = str(uuid.uuid4())
    result, data = cast(ctl, worker, 'attach', sessions['demo'], server, vid)
    assert result == 'end'
    with pytest.raises(messaging.RemoteError) as refused:
        ctl.api.reserve_block_device_name(caller_context(sessions['demo']), worker.host,
                                          {'uuid': server}, vid, timeout=30)
    assert refused.value.exc_type == 'VolumeAlreadyAttached'
    again = cast(ctl, worker, 'attach', sessions['demo'], server, vid, mountpoint='/dev/vdc')
    assert (again[0], again[1]['attachment_id']) == ('end', data['attachment_id'])
    status, attached, records = cinder_says(admin_cinder, vid)
    assert (status, list(records)) == ('in-use', [server])
    assert attached[server]['attachment_id'] == data['attachment_id']

    # what Cinder itself does with the same request: a second (reserved) attachment
    extra = cinder_for(sessions['demo']).attachments.create(vid, None, server)
    assert extra['status'] == 'reserved' and extra['id'] != data['attachment_id']
    cinder_for(sessions['demo']).attachments.delete(extra['id'])  # no connection: allowed
    assert cinder_says(admin_cinder, vid)[2] == {server: 'attached'}


def test_attach_attached_volume_to_different_server(make_worker, controller, volumes,
                                                    sessions, admin_cinder):
    """tempest.api.compute.volumes.test_attach_volume_negative.AttachVolumeNegativeTest
    .test_attach_attached_volume_to_different_server: refused (the cast ends .error at
    check_attach, InvalidVolume; Cinder's own attachment_create says 400, status must
    be available); the volume stays in-use, attached to the first server only."""
    worker = make_worker()
    ctl = controller(worker)
    (vid,) = volumes.make()
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    assert cast(ctl, worker, 'attach', sessions['demo'], first, vid)[0] == 'end'
    result, data = cast(ctl, worker, 'attach', sessions['demo'], second, vid)
    assert result == 'error'
    assert (data['fault']['step'], data['fault']['exception']) == ('check_attach',
                                                                   'InvalidVolume')
    with pytest.raises(cinder_exc.BadRequest) as refused:
        cinder_for(sessions['demo']).attachments.create(vid, None, second)
    assert 'must be available or downloading to reserve, but the current status is ' \
        'in-use' in str(refused.value)
    status, attached, records = cinder_says(admin_cinder, vid)
    assert (status, list(attached), records) == ('in-use', [first], {first: 'attached'})
    assert on_host(worker, second) == {}


def test_list_get_volume_attachments_multiattach(make_worker, controller, volumes, sessions,
                                                 admin_cinder):
    """tempest.api.compute.volumes.test_attach_volume.AttachVolumeMultiAttachTest
    .test_list_get_volume_attachments_multiattach: one multiattach volume attached to
    two servers lists both server ids; each server lists exactly one attachment, the
    one its attach made; detached one by one (_detach_multiattach_volume) the volume is
    in-use while the other has it, then available."""
    worker = make_worker()
    ctl = controller(worker)
    (vid,) = volumes.make(multiattach=True)
    servers = {str(uuid.uuid4()): None, str(uuid.uuid4()): None}
    for server in servers:
        result, data = cast(ctl, worker, 'attach', sessions['demo'], server, vid)
        assert result == 'end', data
        servers[server] = data['attachment_id']
    volume = admin_cinder.volumes.get(vid)
    assert sorted(a['server_id'] for a in volume.attachments) == sorted(servers)
    for server, attachment_id in servers.items():
        listed = attachments_of(sessions['demo'], server)
        assert list(listed) == [attachment_id]
        assert (listed[attachment_id].volume_id, listed[attachment_id].status) == (
            vid, 'attached')
        detach_multiattach(ctl, worker, sessions, admin_cinder, vid, server)


def service_token_session(session, token):
    """The user's own session, sending ``token`` as X-Service-Token (tempest's
    _call_with_fake_service_token)."""
    return ks_session.Session(auth=session.auth, additional_headers={'X-Service-Token': token})


def refused_for_want_of_nova(call, server):
    """Cinder 29's OSSA-2023-003 check: not a service request, the attachment has a
    connection, so Cinder asks Nova whether it still uses it; there is no compute
    endpoint in this cloud's catalog, so the call fails with 500 (EndpointNotFound),
    where a Nova that has the attachment makes it 409 ConflictNovaUsingAttachment."""
    with pytest.raises(cinder_exc.ClientException) as refused:
        call()
    assert refused.value.code == 500, refused.value
    said = [line for line in API_LOG.read_text().splitlines()
            if refused.value.request_id in line]
    assert any('Attachment connected to vm %s, checking data on nova' % server in line
               for line in said), said[-5:]
    assert any(re.search(r'EndpointNotFound.*compute', line) for line in said), said[-5:]


def test_server_detach_rules(make_worker, controller, volumes, sessions, admin_cinder):
    """tempest.scenario.test_server_volume_attachment.TestServerVolumeAttachmentScenario
    .test_server_detach_rules (OSSA-2023-003, bug 2004555), with the attachments-API
    delete of TestServerVolumeAttachScenarioOldVersion.test_old_versions_reject: the
    user's os-detach, os-terminate_connection and attachment delete, and the admin's
    os-force_detach (volume in error), are refused (500, see refused_for_want_of_nova);
    the user's token or a broken one as X-Service-Token is 401 (keystonemiddleware
    13's service_token_roles_required); a detach naming another volume's attachment is
    400. Cinder keeps both attachments; the worker's detach (its service token) works."""
    worker = make_worker()
    ctl = controller(worker)
    vid, other = volumes.make(2)
    server = str(uuid.uuid4())
    result, data = cast(ctl, worker, 'attach', sessions['demo'], server, vid)
    assert result == 'end'
    att_id = data['attachment_id']
    legacy, demo = cinder_for(sessions['demo'], '3.0'), cinder_for(sessions['demo'])
    admin = cinder_for(sessions['admin'], '3.0')
    refused_for_want_of_nova(lambda: legacy.volumes.detach(vid, att_id), server)
    refused_for_want_of_nova(lambda: legacy.volumes.terminate_connection(vid, {}), server)
    refused_for_want_of_nova(lambda: demo.attachments.delete(att_id), server)
    token = sessions['demo'].get_token()
    for fake in (token, token[:-1] + ('a' if token[-1] != 'a' else 'b')):
        faked = cinder_for(service_token_session(sessions['demo'], fake), '3.0')
        with pytest.raises(cinder_exc.Unauthorized):
            faked.volumes.detach(vid, att_id)
        with pytest.raises(cinder_exc.Unauthorized):
            faked.volumes.terminate_connection(vid, {})

    admin_cinder.volumes.reset_state(vid, 'error')
    try:
        force = {'attachment_id': att_id, 'connector': None}
        refused_for_want_of_nova(
            lambda: admin.volumes._action('os-force_detach', vid, force), server)
        faked = cinder_for(service_token_session(sessions['admin'], token), '3.0')
        with pytest.raises(cinder_exc.Unauthorized):
            faked.volumes._action('os-force_detach', vid, force)
    finally:
        admin_cinder.volumes.reset_state(vid, 'in-use')

    result, data = cast(ctl, worker, 'attach', sessions['demo'], server, other)
    assert result == 'end'
    with pytest.raises(cinder_exc.BadRequest, match='Mismatched volume and attachment'):
        legacy.volumes.detach(vid, data['attachment_id'])
    for volume_id in (vid, other):
        status, _, records = cinder_says(admin_cinder, volume_id)
        assert (status, records) == ('in-use', {server: 'attached'})
        assert cast(ctl, worker, 'detach', sessions['demo'], server, volume_id)[0] == 'end'
        assert cinder_says(admin_cinder, volume_id) == ('available', {}, {})


@functools.wraps(test_extend.test_extend_attached_volume, assigned=())
def test_extend_attached_volume(make_worker, controller, volumes, sessions, admin_cinder):
    """tempest.api.volume.test_volumes_extend.VolumesExtendAttachedTest
    .test_extend_attached_volume: test_extend.py's test (run here only, once:
    tests/integration/conftest.py): Cinder extends the in-use volume from microversion
    3.42 on (400 below), it stays in-use and attached; the extend_volume cast gives the
    host Cinder's size, not the cast's."""
    test_extend.test_extend_attached_volume(make_worker, controller, volumes, sessions,
                                            admin_cinder)


def test_reserve_unreserve_volume(make_worker, controller, volumes, sessions, admin_cinder,
                                  cloud, tmp_path):
    """tempest.api.volume.test_volumes_actions.VolumesActionsTest
    .test_reserve_unreserve_volume: reserve makes the volume attaching, unreserve
    available again. Then the worker's legacy flow, failing after its reserve (no iSCSI
    initiator on the host: Cinder's fake driver refuses initialize_connection), leaves
    nothing reserved: available, detached, no attachment row in Cinder's database."""
    legacy = cinder_for(sessions['demo'], '3.0')
    vid, second = volumes.make(2)
    legacy.volumes.reserve(vid)
    assert legacy.volumes.get(vid).status == 'attaching'
    legacy.volumes.unreserve(vid)
    assert legacy.volumes.get(vid).status == 'available'

    (tmp_path / 'no-initiator').mkdir()
    worker = make_worker(cinder__attach_flow='legacy',
                         connector__host_root=tmp_path / 'no-initiator')
    ctl = controller(worker)
    server = str(uuid.uuid4())
    result, data = cast(ctl, worker, 'attach', sessions['demo'], server, second)
    assert result == 'error'
    assert (data['flow'], data['fault']['step']) == ('legacy', 'initialize_connection')
    assert admin_cinder.volumes.get(second).attachments == []
    assert cinder_db(cloud, 'SELECT status, attach_status FROM volumes WHERE id=%s',
                     second) == [('available', 'detached')]
    assert cinder_db(cloud, 'SELECT count(*) FROM volume_attachment WHERE volume_id=%s '
                     'AND NOT deleted', second) == [(0,)]
    assert on_host(worker, server) == {}

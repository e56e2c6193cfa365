"""Casts through rpcapi to a worker subprocess, against the real Keystone + Cinder.

Every case is judged by what Cinder itself reports afterwards.
"""
import json
import os
import subprocess
import time
import uuid

import pytest

from tests.integration.conftest import CLOUD_HOME
from tests.integration.conftest import ROOT
from tests.integration.conftest import caller_context
from tests.integration.conftest import cinder_db

STUCK = {'reserved', 'attaching', 'error_attaching', 'detaching'}


def attach(ctl, worker, ctxt, volume_id, instance_uuid=None, mountpoint='/dev/vdb',
           timeout=60):
    instance = {'uuid': instance_uuid or str(uuid.uuid4()), 'project_id': ctxt.project_id}
    ctl.api.attach_volume(ctxt, worker.host, instance, volume_id, mountpoint)
    seen = ctl.outcomes([ctxt.request_id], timeout)
    events = seen.get(ctxt.request_id, [])
    assert events and events[-1].endswith(('.end', '.error')), (events, worker.logs()[-3000:])
    return events[-1].rsplit('.', 1)[1], instance['uuid']


@pytest.mark.parametrize('flow', ['attachments', 'legacy'])
def test_both_flows_leave_the_volume_in_use_with_our_attachment(flow, make_worker, controller,
                                                                volumes, sessions,
                                                                admin_cinder, cloud):
    worker = make_worker(cinder__attach_flow=flow)
    ctl = controller(worker)
    (vid,) = volumes.make()
    ctxt = caller_context(sessions['demo'])
    result, instance_uuid = attach(ctl, worker, ctxt, vid)
    assert result == 'end', ctl.notes(ctxt.request_id)

    volume = admin_cinder.volumes.get(vid)
    assert volume.status == 'in-use'
    (att,) = volume.attachments
    assert att['server_id'] == instance_uuid
    assert att['host_name'] == worker.host
    assert att['device'] == '/dev/vdb'
    end = ctl.notes(ctxt.request_id)[-1]['payload']['attachworker_object.data']
    assert end['flow'] == flow and end['attachment_id'] == att['attachment_id']
    if flow == 'attachments':
        # the connector the worker sent, as Cinder stored it
        ((stored,),) = cinder_db(cloud, 'SELECT connector FROM volume_attachment WHERE id=%s',
                                 att['attachment_id'])
        connector = json.loads(stored)
        assert connector['host'] == worker.host
        assert connector['initiator'] == (CLOUD_HOME / 'host-root/etc/iscsi/'
                                          'initiatorname.iscsi').read_text().split('=')[1].strip()
        assert connector['mountpoint'] == '/dev/vdb'


def test_volume_in_use_elsewhere_is_refused_and_cinder_unchanged(make_worker, controller,
                                                                 volumes, sessions,
                                                                 admin_cinder):
    worker = make_worker()
    ctl = controller(worker)
    (vid,) = volumes.make()
    first = caller_context(sessions['demo'])
    assert attach(ctl, worker, first, vid)[0] == 'end'
    before = admin_cinder.volumes.get(vid).attachments

    second = caller_context(sessions['demo'])
    result, _ = attach(ctl, worker, second, vid, mountpoint='/dev/vdc')
    assert result == 'error'
    fault = ctl.fault(second.request_id)
    assert (fault['step'], fault['exception']) == ('check_attach', 'InvalidVolume')
    after = admin_cinder.volumes.get(vid)
    assert after.status == 'in-use' and after.attachments == before


def test_nonexistent_volume(make_worker, controller, sessions):
    worker = make_worker()
    ctl = controller(worker)
    ctxt = caller_context(sessions['demo'])
    assert attach(ctl, worker, ctxt, str(uuid.uuid4()))[0] == 'error'
    fault = ctl.fault(ctxt.request_id)
    assert (fault['step'], fault['exception'], fault['code']) == (
        'get_volume', 'VolumeNotFound', 404)


def test_token_rejected_by_keystone_reserves_nothing(make_worker, controller, volumes,
                                                     sessions, admin_cinder):
    worker = make_worker()
    ctl = controller(worker)
    (vid,) = volumes.make()
    ctxt = caller_context(sessions['demo'])
    ctxt.auth_token = 'gAAAAABinvalid-%s' % uuid.uuid4().hex  # Keystone never issued it
    assert attach(ctl, worker, ctxt, vid)[0] == 'error'
    fault = ctl.fault(ctxt.request_id)
    assert (fault['exception'], fault['code']) == ('CinderNotAuthorized', 401)
    volume = admin_cinder.volumes.get(vid)
    assert volume.status == 'available' and volume.attachments == []
    assert list(admin_cinder.attachments.list(search_opts={'volume_id': vid,
                                                            'all_tenants': 1})) == []


def test_volume_of_another_project_is_refused_by_cinder(make_worker, controller, volumes,
                                                        sessions, admin_cinder):
    worker = make_worker()
    ctl = controller(worker)
    (alt_vid,) = volumes.make(user='alt_demo')
    ctxt = caller_context(sessions['demo'])
    assert attach(ctl, worker, ctxt, alt_vid)[0] == 'error'
    fault = ctl.fault(ctxt.request_id)
    assert fault['step'] == 'get_volume'
    assert fault['exception'] in ('VolumeNotFound', 'CinderForbidden')
    volume = admin_cinder.volumes.get(alt_vid)
    assert volume.status == 'available' and volume.attachments == []


def test_cinder_api_down_then_back(make_worker, controller, volumes, sessions, admin_cinder):
    worker = make_worker(cinder__http_retries=1)
    ctl = controller(worker)
    (vid,) = volumes.make()
    local_cloud = str(ROOT / 'tools' / 'local-cloud')
    subprocess.run([local_cloud, 'stop-service', 'cinder-api'], check=True,
                   capture_output=True)
    try:
        ctxt = caller_context(sessions['demo'])
        assert attach(ctl, worker, ctxt, vid)[0] == 'error'
        fault = ctl.fault(ctxt.request_id)
        assert (fault['exception'], fault['code']) == ('CinderUnavailable', 503)
    finally:
        subprocess.run([local_cloud, 'start-service', 'cinder-api'], check=True,
                       capture_output=True)
    assert admin_cinder.volumes.get(vid).status == 'available'
    retry = caller_context(sessions['demo'])
    assert attach(ctl, worker, retry, vid)[0] == 'end', ctl.notes(retry.request_id)
    assert admin_cinder.volumes.get(vid).status == 'in-use'


def test_a_device_clash_is_refused_before_cinder_is_asked(
        make_worker, controller, volumes, sessions, admin_cinder):
    worker = make_worker(cinder__attach_flow='attachments',
                         service_user__send_service_user_token='true')
    ctl = controller(worker)
    first, second = volumes.make(2)
    instance = str(uuid.uuid4())
    ok = caller_context(sessions['demo'])
    assert attach(ctl, worker, ok, first, instance)[0] == 'end'
    # the same device on the same instance: refused when the device is reserved,
    # before Cinder is asked for anything
    clash = caller_context(sessions['demo'])
    assert attach(ctl, worker, clash, second, instance)[0] == 'error'
    fault = ctl.fault(clash.request_id)
    assert (fault['step'], fault['exception']) == ('reserve_device', 'DeviceInUse')
    assert 'undo failed' not in fault['message']
    volume = admin_cinder.volumes.get(second)
    assert volume.status == 'available' and volume.attachments == []
    assert list(admin_cinder.attachments.list(search_opts={'volume_id': second,
                                                            'all_tenants': 1})) == []
    assert admin_cinder.volumes.get(first).status == 'in-use'


def test_fifty_attaches_across_ten_instances_with_eight_threads(make_worker, controller,
                                                                volumes, sessions,
                                                                admin_cinder):
    worker = make_worker(executor_thread_pool_size=8)
    ctl = controller(worker)
    t0 = time.monotonic()
    ids = volumes.make(50)
    created = time.monotonic() - t0
    instances = [str(uuid.uuid4()) for _ in range(10)]
    requests = []
    t0 = time.monotonic()
    for n, vid in enumerate(ids):
        ctxt = caller_context(sessions['demo'])
        requests.append(ctxt.request_id)
        # no mountpoint: the worker picks the next free device of each instance
        ctl.api.attach_volume(ctxt, worker.host, {'uuid': instances[n % 10],
                                                  'project_id': ctxt.project_id}, vid)
    seen = ctl.outcomes(requests, timeout=300)
    elapsed = time.monotonic() - t0
    ends = [r for r in requests if seen.get(r, [])[-1:] == ['instance.volume_attach.end']]
    statuses = {vid: admin_cinder.volumes.get(vid).status for vid in ids}
    print('50 attaches, 10 instances, 8 threads: volumes created in %.1f s, attached in '
          '%.1f s (%.1f attaches/s); %d .end' % (created, elapsed, 50 / elapsed, len(ends)))
    assert not STUCK & set(statuses.values()), statuses
    assert set(statuses.values()) == {'in-use'}, statuses
    assert len(ends) == 50
    devices = {}
    for vid in ids:
        (att,) = admin_cinder.volumes.get(vid).attachments
        devices.setdefault(att['server_id'], []).append(att['device'])
    assert sorted(devices) == sorted(instances)
    for devs in devices.values():
        assert sorted(devs) == ['/dev/vdb', '/dev/vdc', '/dev/vdd', '/dev/vde', '/dev/vdf']


def test_attachworker_cast_cli_waits_and_prints_the_outcome(make_worker, volumes, cloud):
    worker = make_worker()
    (vid,) = volumes.make()
    env = dict(os.environ)
    for line in (CLOUD_HOME / 'demo-openrc').read_text().splitlines():
        if line.startswith('export '):
            key, value = line[len('export '):].split('=', 1)
            env[key] = value
    cli = [str(ROOT / '.venv/bin/attachworker-cast'), '--config-file', str(worker.config),
           'attach', '--host', worker.host, '--instance', str(uuid.uuid4()), '--volume']
    done = subprocess.run(cli + [vid, '--wait', '60'], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    note = json.loads(done.stdout)
    assert note['event_type'] == 'instance.volume_attach.end'
    assert 'reserved /dev/vdb on host' in done.stderr  # the call came first
    assert note['payload']['attachworker_object.data']['volume_id'] == vid
    missing = subprocess.run(cli + [str(uuid.uuid4()), '--wait', '60'], env=env,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1
    assert json.loads(missing.stdout)['event_type'] == 'instance.volume_attach.error'
    # no worker serves that host: no outcome comes, exit status 2
    cli[cli.index(worker.host)] = 'no-such-host-%s' % uuid.uuid4().hex[:6]
    nobody = subprocess.run(cli + [vid, '--wait', '3'], env=env, capture_output=True,
                            text=True, timeout=60)
    # without --mountpoint it asks the host for the device first: nobody answers
    assert nobody.returncode == 2 and 'did not answer the device reservation' in \
        nobody.stderr
    nobody = subprocess.run(cli + [vid, '--mountpoint', '/dev/vdc', '--wait', '3'],
                            env=env, capture_output=True, text=True, timeout=60)
    assert nobody.returncode == 2 and 'no outcome' in nobody.stderr
    # a broker that does not answer: a clear error and exit status 3, not a hang
    dead = worker.config.with_name('dead-broker.conf')
    dead.write_text(worker.config.read_text().replace(
        'rabbit://guest:guest@127.0.0.1:5672/', 'rabbit://guest:guest@127.0.0.1:1/'))
    cli[cli.index(str(worker.config))] = str(dead)
    refused = subprocess.run(cli + [vid, '--wait', '3'], env=env, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 3, refused.stderr[-2000:]
    assert 'cannot reach the message broker (127.0.0.1:1)' in refused.stderr


@pytest.mark.parametrize('flow', ['attachments', 'legacy'])
def test_detach_leaves_the_volume_available(flow, make_worker, controller, volumes, sessions,
                                            admin_cinder):
    worker = make_worker(cinder__attach_flow=flow)
    ctl = controller(worker)
    (vid,) = volumes.make()
    ctxt = caller_context(sessions['demo'])
    result, instance_uuid = attach(ctl, worker, ctxt, vid)
    assert result == 'end' and admin_cinder.volumes.get(vid).status == 'in-use'

    detach = caller_context(sessions['demo'])
    ctl.api.detach_volume(detach, worker.host, {'uuid': instance_uuid}, vid)
    seen = ctl.outcomes([detach.request_id], 60)
    assert seen[detach.request_id] == ['instance.volume_detach.start',
                                       'instance.volume_detach.end'], ctl.notes(
        detach.request_id)
    volume = admin_cinder.volumes.get(vid)
    assert volume.status == 'available' and volume.attachments == []
    # a second detach of the same volume changes nothing and still gets its outcome
    again = caller_context(sessions['demo'])
    ctl.api.detach_volume(again, worker.host, {'uuid': instance_uuid}, vid)
    assert ctl.outcomes([again.request_id], 60)[again.request_id][-1] == \
        'instance.volume_detach.end'
    assert admin_cinder.volumes.get(vid).status == 'available'

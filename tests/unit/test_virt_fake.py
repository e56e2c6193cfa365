"""The fake virt driver: a hypervisor's rules, durable records, no secrets."""
import datetime
import json
import logging
import os
import threading

from oslo_config import cfg
import pytest

from attachworker import exception
from attachworker import virt
import attachworker.conf
from attachworker.virt import fake
from attachworker.virt import fake_store

INSTANCE = {'uuid': '8f0e3c4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b', 'project_id': 'p1'}
OTHER_INSTANCE = {'uuid': '1a2b3c4d-0000-4000-8000-000000000002'}
VOL_A = 'b1204e0c-1111-4111-8111-111111111111'
VOL_B = 'b1204e0c-2222-4222-8222-222222222222'
SECRET = 'chap-s3cret-Pa55'


def iscsi_info(access_mode='rw'):
    return {'driver_volume_type': 'iscsi',
            'data': {'target_iqn': 'iqn.2010-10.org.openstack:volume-b120',
                     'target_portal': '192.0.2.20:3260', 'target_lun': 1,
                     'auth_method': 'CHAP', 'auth_username': 'chapuser',
                     'auth_password': SECRET, 'discovery_auth_password': SECRET,
                     'access_mode': access_mode}}


@pytest.fixture
def conf(tmp_path):
    conf = cfg.ConfigOpts()
    attachworker.conf.register_opts(conf)
    conf(args=[], default_config_files=[])
    conf.set_override('state_path', str(tmp_path))
    return conf


@pytest.fixture
def driver(conf):
    return fake.FakeDriver(conf)


def state_file(conf, instance_uuid=None):
    """The file of one instance's records."""
    return os.path.join(conf.state_path, 'fake-virt', 'instances',
                        (instance_uuid or INSTANCE['uuid']) + '.json')


def test_attachment_record_has_the_contract_fields(driver):
    driver.attach_volume(None, iscsi_info('ro'), INSTANCE, '/dev/vdb', VOL_A)
    [record] = driver.get_attachments(INSTANCE['uuid'])
    attached_at = datetime.datetime.fromisoformat(record.pop('attached_at'))
    assert attached_at.tzinfo is not None
    assert record == {'volume_id': VOL_A, 'mountpoint': '/dev/vdb',
                      'driver_volume_type': 'iscsi', 'access_mode': 'ro', 'mode': 'ro',
                      'flow': None, 'attachment_id': None, 'size_bytes': None}


def test_the_record_of_how_it_was_attached_is_kept(driver):
    driver.attach_volume(None, iscsi_info('rw'), INSTANCE, '/dev/vdb', VOL_A,
                         {'flow': 'legacy', 'attachment_id': 'a-1', 'mode': 'ro'})
    [record] = fake.FakeDriver(driver.conf).get_attachments(INSTANCE['uuid'])
    # read-only as asked, even though the connection info said rw
    assert (record['flow'], record['attachment_id'], record['mode']) == (
        'legacy', 'a-1', 'ro')


def test_records_survive_a_restart(conf, driver):
    driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/vdb', VOL_A)
    reserved = driver.reserve_device_name(INSTANCE['uuid'], VOL_B)
    restarted = fake.FakeDriver(conf)
    assert restarted.get_attachments(INSTANCE['uuid']) == driver.get_attachments(
        INSTANCE['uuid'])
    # The reservation survived too: asking again returns it, a new volume gets another.
    assert restarted.reserve_device_name(INSTANCE['uuid'], VOL_B) == reserved == '/dev/vdc'
    assert restarted.reserve_device_name(INSTANCE['uuid'], 'vol-c') == '/dev/vdd'
    restarted.detach_volume(None, INSTANCE, '/dev/vdb', VOL_A)
    assert fake.FakeDriver(conf).get_attachments(INSTANCE['uuid']) == []


def test_another_volume_on_a_used_mountpoint_is_refused(driver):
    driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/vdb', VOL_A)
    with pytest.raises(exception.DeviceInUse) as info:
        driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/vdb', VOL_B)
    assert info.value.code == 409
    assert [r['volume_id'] for r in driver.get_attachments(INSTANCE['uuid'])] == [VOL_A]


def test_same_mountpoint_on_another_instance_is_fine(driver):
    driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/vdb', VOL_A)
    driver.attach_volume(None, iscsi_info(), OTHER_INSTANCE, '/dev/vdb', VOL_A)
    assert len(driver.get_attachments(OTHER_INSTANCE['uuid'])) == 1


def test_reattaching_the_same_volume_at_the_same_mountpoint_is_a_no_op(driver):
    driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/vdb', VOL_A)
    first = driver.get_attachments(INSTANCE['uuid'])
    driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/vdb', VOL_A)
    assert driver.get_attachments(INSTANCE['uuid']) == first  # same attached_at too


def test_same_volume_at_a_second_mountpoint_is_refused(driver):
    driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/vdb', VOL_A)
    with pytest.raises(exception.VirtDriverError, match='already attached'):
        driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/vdc', VOL_A)


@pytest.mark.parametrize('info', [
    None, 'iscsi', {}, {'driver_volume_type': 'nfs', 'data': {}},
    {'driver_volume_type': 'iscsi', 'data': {'access_mode': 'wo'}},
])
def test_unusable_connection_info_is_refused(driver, info):
    with pytest.raises(exception.VirtDriverError):
        driver.attach_volume(None, info, INSTANCE, '/dev/vdb', VOL_A)
    assert driver.get_attachments(INSTANCE['uuid']) == []


@pytest.mark.parametrize('kind', fake.KNOWN_VOLUME_TYPES)
def test_every_known_volume_type_attaches(driver, kind):
    driver.attach_volume(None, {'driver_volume_type': kind, 'data': {}}, INSTANCE,
                         '/dev/vdb', VOL_A)
    assert driver.get_attachments(INSTANCE['uuid'])[0]['driver_volume_type'] == kind


def test_detaching_what_is_not_attached_is_a_no_op(driver):
    driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/vdb', VOL_A)
    driver.detach_volume(None, INSTANCE, '/dev/vdc', VOL_B)
    driver.detach_volume(None, OTHER_INSTANCE, '/dev/vdb', VOL_A)
    assert [r['volume_id'] for r in driver.get_attachments(INSTANCE['uuid'])] == [VOL_A]


def test_detach_frees_the_mountpoint(driver):
    driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/vdb', VOL_A)
    driver.detach_volume(None, INSTANCE, '/dev/vdb', VOL_A)
    driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/vdb', VOL_B)
    assert [r['volume_id'] for r in driver.get_attachments(INSTANCE['uuid'])] == [VOL_B]


def test_device_names_follow_vdb_vdc_and_skip_used_ones(driver):
    uuid = INSTANCE['uuid']
    assert driver.reserve_device_name(uuid, 'v1') == '/dev/vdb'
    driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/vdc', VOL_A)
    assert driver.reserve_device_name(uuid, 'v2') == '/dev/vdd'
    assert driver.reserve_device_name(uuid, 'v1') == '/dev/vdb'  # asking again
    assert driver.reserve_device_name(uuid, VOL_A) == '/dev/vdc'  # already attached
    driver.release_device_name(uuid, 'v1')
    assert driver.reserve_device_name(uuid, 'v3') == '/dev/vdb'  # freed name reused


def test_device_names_go_on_after_vdz(driver):
    names = [driver.reserve_device_name(INSTANCE['uuid'], 'v%d' % i) for i in range(26)]
    assert names[0] == '/dev/vdb'
    assert names[24] == '/dev/vdz'
    assert names[25] == '/dev/vdaa'


def test_requested_device_is_honoured_only_if_free(driver):
    uuid = INSTANCE['uuid']
    assert driver.reserve_device_name(uuid, 'v1', device='/dev/vdf') == '/dev/vdf'
    with pytest.raises(exception.DeviceInUse):
        driver.reserve_device_name(uuid, 'v2', device='/dev/vdf')
    with pytest.raises(exception.DeviceInUse):
        driver.reserve_device_name(uuid, 'v2', device='/dev/vda')  # the root disk
    with pytest.raises(exception.InvalidInput):
        driver.reserve_device_name(uuid, 'v2', device='/dev/../etc/passwd')


def test_attach_cannot_take_a_name_reserved_for_another_volume(driver):
    uuid = INSTANCE['uuid']
    name = driver.reserve_device_name(uuid, VOL_A)
    with pytest.raises(exception.DeviceInUse):
        driver.attach_volume(None, iscsi_info(), INSTANCE, name, VOL_B)
    driver.attach_volume(None, iscsi_info(), INSTANCE, name, VOL_A)
    # The attach consumed the reservation: releasing it now must not free the disk.
    driver.release_device_name(uuid, VOL_A)
    assert driver.reserve_device_name(uuid, VOL_B) == '/dev/vdc'


def test_concurrent_reservations_never_collide(conf, driver):
    barrier = threading.Barrier(20)
    names, errors = {}, []

    def reserve(i):
        try:
            barrier.wait()
            names[i] = driver.reserve_device_name(INSTANCE['uuid'], 'vol-%02d' % i)
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=reserve, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    expected = {'/dev/vd' + chr(ord('b') + i) for i in range(20)}
    assert set(names.values()) == expected
    # No update was lost on the way to disk either.
    restarted = fake.FakeDriver(conf)
    assert {restarted.reserve_device_name(INSTANCE['uuid'], 'vol-%02d' % i)
            for i in range(20)} == expected


def test_state_file_never_holds_connection_secrets(conf, driver, caplog):
    caplog.set_level(logging.DEBUG)
    driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/vdb', VOL_A)
    with open(state_file(conf)) as f:
        text = f.read()
    assert SECRET not in text
    assert 'target_iqn' not in text  # connection_info['data'] is not kept at all
    assert json.loads(text)['attachments'][VOL_A]
    assert SECRET not in caplog.text
    assert "'auth_password': '***'" in caplog.text  # logged, but masked
    assert 'Attached volume %s' % VOL_A in caplog.text


def test_state_file_is_written_atomically_and_privately(conf, driver):
    driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/vdb', VOL_A)
    state_dir = os.path.dirname(state_file(conf))
    # no temp file left; .lock is the flock other processes share
    assert sorted(os.listdir(os.path.dirname(state_dir))) == ['.lock', 'instances', 'locks',
                                                             'reserved']
    assert os.listdir(state_dir) == [INSTANCE['uuid'] + '.json']
    assert os.stat(state_file(conf)).st_mode & 0o077 == 0


def test_corrupt_state_file_is_an_error_not_an_empty_start(conf, driver):
    driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/vdb', VOL_A)
    with open(state_file(conf), 'w') as f:
        f.write('{"attachments": {')
    with pytest.raises(exception.VirtDriverError, match=INSTANCE['uuid'] + '.json'):
        fake.FakeDriver(conf).get_attachments(INSTANCE['uuid'])


def test_a_call_reads_and_writes_only_its_instances_file(conf, driver):
    """Its cost does not grow with the number of instances (issue 9, goal 5)."""
    others = ['0e5e6e4c-%04d-4000-8000-000000000000' % i for i in range(50)]
    for uuid in others:
        driver.attach_volume(None, iscsi_info(), {'uuid': uuid}, '/dev/vdb', VOL_A)
    before = {uuid: os.stat(state_file(conf, uuid)).st_mtime_ns for uuid in others}
    opened = []
    real_open = open

    def spy(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)
    import builtins
    builtins.open, saved = spy, builtins.open
    try:
        driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/vdb', VOL_B)
        driver.get_attachments(INSTANCE['uuid'])
    finally:
        builtins.open = saved
    assert {uuid: os.stat(state_file(conf, uuid)).st_mtime_ns for uuid in others} == before
    assert not [p for p in opened if any(uuid in p for uuid in others)]


def test_the_first_releases_single_file_is_split_up(conf):
    old_dir = os.path.join(conf.state_path, 'fake-virt')
    os.makedirs(old_dir)
    with open(os.path.join(old_dir, 'attachments.json'), 'w') as f:
        json.dump({'version': 1, 'instances': {INSTANCE['uuid']: {
            'attachments': {VOL_A: {'volume_id': VOL_A, 'mountpoint': '/dev/vdb',
                                    'driver_volume_type': 'iscsi', 'access_mode': 'rw',
                                    'attached_at': '2026-11-25T10:42:07+00:00'}},
            'reservations': {VOL_B: '/dev/vdc'}}}}, f)
    driver = fake.FakeDriver(conf)
    assert [a['volume_id'] for a in driver.get_attachments(INSTANCE['uuid'])] == [VOL_A]
    assert [(r['volume_id'], r['device']) for r in driver.reservations()] == [
        (VOL_B, '/dev/vdc')]
    assert not os.path.exists(os.path.join(old_dir, 'attachments.json'))


def test_reservations_are_found_through_markers_and_the_old_index_is_converted(conf):
    base = os.path.join(conf.state_path, 'fake-virt')
    driver = fake.FakeDriver(conf)
    assert driver.reserve_device_name(INSTANCE['uuid'], VOL_A) == '/dev/vdb'
    marker = os.path.join(base, 'reserved', INSTANCE['uuid'])
    assert os.path.exists(marker)
    driver.release_device_name(INSTANCE['uuid'], VOL_A)
    assert not os.path.exists(marker) and driver.reservations() == []
    # the second release's index: reservations.json, turned into markers once
    driver.reserve_device_name(INSTANCE['uuid'], VOL_B)
    os.unlink(marker)
    with open(os.path.join(base, 'reservations.json'), 'w') as f:
        json.dump({INSTANCE['uuid']: {VOL_B: ['/dev/vdb', 1.0]}}, f)
    driver = fake.FakeDriver(conf)
    assert [(r['volume_id'], r['device']) for r in driver.reservations()] == [
        (VOL_B, '/dev/vdb')]
    assert os.path.exists(marker)
    assert not os.path.exists(os.path.join(base, 'reservations.json'))
    # a marker left by a crash, for an instance without reservations, goes away
    stray = os.path.join(base, 'reserved', '0c1d2e3f-4a5b-4e7f-8a9b-8f0e3c4a5b6d')
    open(stray, 'w').close()
    assert len(driver.reservations()) == 1 and not os.path.exists(stray)


def test_capabilities_are_advertised(driver):
    assert driver.capabilities['supports_multiattach'] is True
    assert driver.capabilities['supports_device_naming'] is True


def test_entry_point_lookup_finds_fake(conf):
    assert 'fake' in virt.installed_drivers()
    assert isinstance(virt.load_driver(conf), fake.FakeDriver)


def test_unknown_driver_name_lists_installed_drivers(conf):
    conf.set_override('driver', 'hyperv-nope', group='virt')
    with pytest.raises(exception.VirtDriverNotFound) as info:
        virt.load_driver(conf)
    assert 'hyperv-nope' in str(info.value)
    assert 'fake' in str(info.value)


def test_driver_failing_to_start_is_not_reported_as_missing(conf, driver):
    with open(os.path.join(conf.state_path, 'fake-virt', 'attachments.json'), 'w') as f:
        f.write('not json')  # an old state file it cannot read
    with pytest.raises(exception.VirtDriverError) as info:
        virt.load_driver(conf)
    assert not isinstance(info.value, exception.VirtDriverNotFound)


def test_two_drivers_on_one_state_never_overwrite_each_other(conf, driver):
    # e.g. attachworker-manage reconcile running beside the worker
    other = fake.FakeDriver(conf)
    driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/vdb', VOL_A)
    other.attach_volume(None, iscsi_info(), INSTANCE, '/dev/vdc', VOL_B)
    assert {a['volume_id'] for a in driver.get_attachments(INSTANCE['uuid'])} == {VOL_A, VOL_B}
    other.detach_volume(None, INSTANCE, '/dev/vdb', VOL_A)
    assert [a['volume_id'] for a in driver.get_attachments(INSTANCE['uuid'])] == [VOL_B]


def test_a_crash_between_a_reservations_file_and_its_marker_loses_nothing(conf, monkeypatch):
    """The marker exists whenever the file holds a reservation: made before the file
    gains its first, removed after the file lost its last."""
    driver = fake.FakeDriver(conf)
    marker = os.path.join(conf.state_path, 'fake-virt', 'reserved', INSTANCE['uuid'])

    def crash(*args):
        raise exception.VirtDriverError(reason='killed')
    real_write = fake_store._write
    monkeypatch.setattr(fake_store, '_write', crash)
    with pytest.raises(exception.VirtDriverError):
        driver.reserve_device_name(INSTANCE['uuid'], VOL_A)
    assert os.path.exists(marker)  # made first; the file never got the reservation
    assert driver.reservations() == [] and not os.path.exists(marker)  # cleaned
    monkeypatch.setattr(fake_store, '_write', real_write)
    driver.reserve_device_name(INSTANCE['uuid'], VOL_A)
    monkeypatch.setattr(fake_store, '_write', crash)
    with pytest.raises(exception.VirtDriverError):  # the attach that uses it dies
        driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/vdb', VOL_A)
    # the file still has the reservation, so its marker is still there: expiry finds it
    assert [r['volume_id'] for r in driver.reservations()] == [VOL_A]
    assert os.path.exists(marker)


def test_an_instance_held_by_another_process_waits_only_its_own_calls(conf, driver):
    """The lock is per instance and shared by every process of the host: while another
    process holds one instance's, a call for it waits and one for another instance
    does not."""
    import subprocess
    import sys
    lock = os.path.join(conf.state_path, 'fake-virt', 'locks', INSTANCE['uuid'] + '.lock')
    holder = subprocess.Popen(
        [sys.executable, '-c', 'import fcntl, sys, time\n'
         'f = open(sys.argv[1], "a"); fcntl.flock(f, fcntl.LOCK_EX)\n'
         'print("held", flush=True); sys.stdin.readline()', lock],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        blocked = threading.Thread(target=driver.attach_volume,
                                   args=(None, iscsi_info(), INSTANCE, '/dev/vdb', VOL_A))
        blocked.start()
        driver.attach_volume(None, iscsi_info(), OTHER_INSTANCE, '/dev/vdb', VOL_B)
        assert driver.get_attachments(OTHER_INSTANCE['uuid'])  # did not wait
        blocked.join(0.5)
        assert blocked.is_alive()  # waits for the other process
    finally:
        holder.stdin.write('\n')
        holder.stdin.flush()
        holder.wait(10)
    blocked.join(10)
    assert [a['volume_id'] for a in driver.get_attachments(INSTANCE['uuid'])] == [VOL_A]

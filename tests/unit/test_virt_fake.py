"""The fake virt driver: a hypervisor's rules, durable records, no secrets."""
import datetime
import glob
import json
import logging
import os
import pathlib
import sqlite3
import subprocess
import sys
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


def state_dir(conf):
    return os.path.join(conf.state_path, 'fake-virt')


def state_bytes(conf):
    """Every byte the driver keeps on disk (the database, its WAL and its shm)."""
    return b''.join(pathlib.Path(path).read_bytes() for path in
                    sorted(glob.glob(os.path.join(state_dir(conf), '**'), recursive=True))
                    if os.path.isfile(path))


def rows(conf):
    """{instance uuid: (record, reserved)}, as another process reads them."""
    db = sqlite3.connect('file:%s?mode=ro' % os.path.join(state_dir(conf), 'records.sqlite'),
                         uri=True)
    try:
        return {uuid: (json.loads(record), reserved) for uuid, record, reserved in
                db.execute('SELECT uuid, record, reserved FROM instances')}
    finally:
        db.close()


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


def test_state_never_holds_connection_secrets(conf, driver, caplog):
    caplog.set_level(logging.DEBUG)
    driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/vdb', VOL_A)
    assert rows(conf)[INSTANCE['uuid']][0]['attachments'][VOL_A]
    data = state_bytes(conf)
    assert data and SECRET.encode() not in data
    assert b'target_iqn' not in data  # connection_info['data'] is not kept at all
    assert SECRET not in caplog.text
    assert "'auth_password': '***'" in caplog.text  # logged, but masked
    assert 'Attached volume %s' % VOL_A in caplog.text


def test_what_a_call_returns_is_committed_and_private(conf, driver):
    driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/vdb', VOL_A)
    # another connection sees the row at once: the call returned after its COMMIT
    assert list(rows(conf)) == [INSTANCE['uuid']]
    assert os.stat(state_dir(conf)).st_mode & 0o077 == 0
    assert driver.reserve_device_name(INSTANCE['uuid'], VOL_B) == '/dev/vdc'
    assert rows(conf)[INSTANCE['uuid']][1] == 1  # the flag expiry reads
    driver.detach_volume(None, INSTANCE, '/dev/vdb', VOL_A)
    driver.release_device_name(INSTANCE['uuid'], VOL_B)
    assert rows(conf) == {}  # an instance with nothing leaves no row


def test_a_change_that_fails_leaves_the_row_as_it_was(conf, driver):
    driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/vdb', VOL_A)
    before = rows(conf)

    def half_done(inst):
        inst['attachments'].clear()
        raise exception.VirtDriverError(reason='failed half way')
    with pytest.raises(exception.VirtDriverError, match='half way'):
        driver._store.update(INSTANCE['uuid'], half_done)
    assert rows(conf) == before
    assert [a['volume_id'] for a in driver.get_attachments(INSTANCE['uuid'])] == [VOL_A]


def test_corrupt_record_is_an_error_not_an_empty_start(conf, driver):
    driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/vdb', VOL_A)
    db = sqlite3.connect(os.path.join(state_dir(conf), 'records.sqlite'))
    with db:
        db.execute("UPDATE instances SET record = '{\"attachments\": {'")
    db.close()
    for call in (lambda d: d.get_attachments(INSTANCE['uuid']),
                 lambda d: d.attach_volume(None, iscsi_info(), INSTANCE, '/dev/vdc', VOL_B)):
        with pytest.raises(exception.VirtDriverError, match=INSTANCE['uuid']):
            call(fake.FakeDriver(conf))


@pytest.mark.parametrize('bad', ['', 'inst-\ud800', None, 7])
def test_an_instance_uuid_that_cannot_be_stored_is_bad_input(driver, bad):
    with pytest.raises(exception.InvalidInput):
        driver.reserve_device_name(bad, VOL_A)
    with pytest.raises(exception.InvalidInput):
        driver.get_attachments(bad)


@pytest.mark.parametrize('bad', [7, None, b'vol'])
def test_a_volume_id_that_is_not_text_is_bad_input(conf, driver, bad):
    """JSON would store 7 as "7": the next call for 7 would not find it."""
    with pytest.raises(exception.InvalidInput):
        driver.reserve_device_name(INSTANCE['uuid'], bad)
    with pytest.raises(exception.InvalidInput):
        driver.attach_volume(None, iscsi_info(), INSTANCE, '/dev/vdb', bad)
    assert rows(conf) == {}


def test_every_statement_finds_its_rows_through_an_index(conf, driver):
    """A call's cost does not grow with the number of instances nor with history
    (issue 9, goal 5): no statement of the store scans the table."""
    db = sqlite3.connect(os.path.join(state_dir(conf), 'records.sqlite'))
    try:
        def plan(sql, *args):
            return ' '.join(row[-1] for row in db.execute('EXPLAIN QUERY PLAN ' + sql, args))
        for sql in (fake_store.SELECT_ONE, fake_store.DELETE):
            assert plan(sql, 'x').startswith('SEARCH instances USING INDEX'), sql
        # a scan of the partial index: of the rows holding reservations, no others
        assert plan(fake_store.SELECT_RESERVED) == \
            'SCAN instances USING INDEX instances_reserved'
    finally:
        db.close()


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


def test_the_third_releases_files_are_imported_once(conf):
    base = state_dir(conf)
    for name in ('instances', 'reserved', 'locks'):
        os.makedirs(os.path.join(base, name))
    with open(os.path.join(base, 'instances', INSTANCE['uuid'] + '.json'), 'w') as f:
        json.dump({'attachments': {VOL_A: {'volume_id': VOL_A, 'mountpoint': '/dev/vdb',
                                           'driver_volume_type': 'rbd', 'access_mode': 'rw',
                                           'attached_at': '2026-11-25T10:42:07+00:00'}},
                   'reservations': {VOL_B: '/dev/vdc'}, 'reserved_at': {VOL_B: 5.0}}, f)
    open(os.path.join(base, 'reserved', INSTANCE['uuid']), 'w').close()
    driver = fake.FakeDriver(conf)
    assert [a['volume_id'] for a in driver.get_attachments(INSTANCE['uuid'])] == [VOL_A]
    assert driver.reservations() == [{'instance_uuid': INSTANCE['uuid'], 'volume_id': VOL_B,
                                      'device': '/dev/vdc', 'reserved_at': 5.0}]
    assert sorted(n for n in os.listdir(base) if not n.startswith('records.sqlite')) == [
        '.lock']
    # started again: nothing to import, nothing lost
    assert [a['volume_id'] for a in fake.FakeDriver(conf).get_attachments(
        INSTANCE['uuid'])] == [VOL_A]


def test_a_bad_row_does_not_hide_the_other_reservations(conf, driver, caplog):
    driver.reserve_device_name(INSTANCE['uuid'], VOL_A)
    driver.reserve_device_name(OTHER_INSTANCE['uuid'], VOL_B)
    db = sqlite3.connect(os.path.join(state_dir(conf), 'records.sqlite'))
    with db:
        db.execute('UPDATE instances SET record = \'{"reservations": []}\' WHERE uuid = ?',
                   (INSTANCE['uuid'],))
    db.close()
    assert [r['volume_id'] for r in driver.reservations()] == [VOL_B]
    assert 'Reservations of instance %s cannot be read' % INSTANCE['uuid'] in caplog.text
    with pytest.raises(exception.VirtDriverError, match='reservations is not a mapping'):
        driver.get_attachments(INSTANCE['uuid'])


def test_an_old_file_with_a_bad_instance_is_an_error_naming_it_and_imports_nothing(conf):
    base = state_dir(conf)
    os.makedirs(base)
    with open(os.path.join(base, 'attachments.json'), 'w') as f:
        json.dump({'instances': {
            INSTANCE['uuid']: {'reservations': {VOL_A: '/dev/vdb'}},
            '': {'reservations': {VOL_B: '/dev/vdc'}}}}, f)
    with pytest.raises(exception.VirtDriverError, match='attachments.json'):
        fake.FakeDriver(conf)
    assert rows(conf) == {}  # one transaction: nothing of it
    assert os.path.exists(os.path.join(base, 'attachments.json'))  # kept for the operator


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


CHILD = """
import os, sys, time
from oslo_config import cfg
import attachworker.conf
from attachworker.virt import fake
conf = cfg.ConfigOpts()
attachworker.conf.register_opts(conf)
conf(args=[], default_config_files=[])
conf.set_override('state_path', sys.argv[1])
driver = fake.FakeDriver(conf)
print('ready', flush=True)
sys.stdin.readline()
for i in range(1000):
    print(driver.reserve_device_name(sys.argv[2], 'child-vol-%03d' % i), flush=True)
"""


def test_two_processes_on_one_instance_never_collide_and_kill_9_loses_nothing(conf, driver):
    """Every process of the host shares the records: while another process reserves
    devices on the same instance, none is handed out twice; what it was told survives
    its kill -9 in the middle of its writes."""
    child = subprocess.Popen([sys.executable, '-c', CHILD, conf.state_path,
                              INSTANCE['uuid']], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == 'ready'
        child.stdin.write('go\n')
        child.stdin.flush()
        mine = [driver.reserve_device_name(INSTANCE['uuid'], 'vol-%02d' % i)
                for i in range(30)]
        theirs = [child.stdout.readline().strip() for _ in range(30)]
    finally:
        child.kill()  # SIGKILL, while it is still reserving
        child.wait(10)
    assert len(set(mine + theirs)) == 60, (mine, theirs)
    found = {r['volume_id']: r['device'] for r in fake.FakeDriver(conf).reservations()}
    theirs_found = [found[v] for v in found if v.startswith('child-vol-')]
    assert set(theirs) <= set(theirs_found)  # every device it was told is on disk
    assert len(theirs_found) < 1000  # it really was killed in the middle
    assert len(set(found.values())) == len(found)


def test_a_records_database_that_cannot_be_opened_is_a_driver_error(tmp_path):
    from attachworker.virt import fake_store
    directory = tmp_path / 'fake-virt'
    directory.mkdir()
    (directory / 'records.sqlite.writer').mkdir()  # its lock file cannot be opened
    with pytest.raises(exception.VirtDriverError, match='cannot open'):
        fake_store.Store(str(directory))

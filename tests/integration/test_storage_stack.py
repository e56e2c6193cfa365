"""tools/storage-stack end to end: a Cinder volume of type `ceph` is a real RBD image, and a
QEMU guest of the stack's libvirtd reads and writes it through the libvirt ceph secret.

Skipped (with the reason) when the stack is not up: ``tools/storage-stack up`` after
``tools/local-cloud up``. Nothing here is mocked: Cinder's RBD driver creates and deletes
the image, QEMU writes the bytes that the rbd binding (as client.cinder) reads back.
"""
import json
import os
import pathlib
import stat
import subprocess
import time
import uuid

import pytest

from tests.integration.conftest import cinder_for

ROOT = pathlib.Path(__file__).resolve().parents[2]
STACK = ROOT / 'tools' / 'storage-stack'
CLOUD_HOME = pathlib.Path(os.environ.get('ATTACHWORKER_CLOUD_HOME',
                                         '/var/tmp/attachworker-cloud'))
STORAGE_HOME = pathlib.Path(os.environ.get('ATTACHWORKER_STORAGE_HOME',
                                           str(CLOUD_HOME / 'storage')))
MiB = 1024 * 1024


@pytest.fixture(scope='module')
def storage():
    status = subprocess.run([str(STACK), 'status'], capture_output=True, text=True)
    text = (status.stdout + status.stderr).strip()
    if status.returncode != 0 and 'down: nothing of the storage stack runs' in text:
        pytest.skip('the storage stack is not up (run tools/storage-stack up after '
                    'tools/local-cloud up)')
    if status.returncode != 0:   # up, but broken: that is a failure, not a reason to skip
        pytest.fail('tools/storage-stack status says it is not healthy:\n' + text)
    return json.loads((STORAGE_HOME / 'storage.json').read_text())


def virsh(storage, *args, check=True):
    res = subprocess.run(['virsh', '-q', '-c', storage['libvirt_uri']] + list(args),
                         capture_output=True, text=True, timeout=60)
    if check:
        assert res.returncode == 0, res.stderr
    return res


def wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError('timed out after %ss: %s' % (timeout, what))


class Pool:
    """The pool as client.cinder sees it, through Debian's rbd binding."""

    def __init__(self, storage):
        import rados
        self.cluster = rados.Rados(conffile=storage['ceph_conf'], rados_id=storage['ceph_user'],
                                   conf={'keyring': storage['ceph_keyring']})
        self.cluster.connect(timeout=10)
        self.ioctx = self.cluster.open_ioctx(storage['ceph_pool'])

    def images(self):
        import rbd
        return rbd.RBD().list(self.ioctx)

    def image(self, name):
        import rbd
        return rbd.Image(self.ioctx, name, read_only=True)

    def close(self):
        self.ioctx.close()
        self.cluster.shutdown()


@pytest.fixture
def pool(storage):
    p = Pool(storage)
    yield p
    p.close()


def test_outputs_and_key_files(storage):
    for key in ('ceph_conf', 'ceph_keyring', 'ceph_pool', 'rbd_secret_uuid', 'libvirt_uri',
                'volume_type'):
        assert storage.get(key), key
    assert stat.S_IMODE(os.stat(storage['ceph_keyring']).st_mode) == 0o600
    assert storage['ceph_pool'] == 'volumes' and storage['volume_type'] == 'ceph'
    secrets = virsh(storage, 'secret-list').stdout
    assert storage['rbd_secret_uuid'] in secrets and 'client.cinder secret' in secrets
    assert virsh(storage, 'net-list', '--all', '--name').stdout.split() == []


def _listening_inodes():
    inodes = {}
    for proto in ('tcp', 'tcp6', 'udp', 'udp6'):
        with open('/proc/net/%s' % proto) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if proto.startswith('udp') or state == '0A':   # 0A: LISTEN
                    inodes[inode] = (proto, local)
    return inodes


def test_every_socket_of_the_stack_is_on_loopback(storage):
    """Ceph's messengers, libvirtd, virtlogd: nothing listens beyond 127.0.0.1."""
    inodes = _listening_inodes()
    seen = []
    for name, pid in storage['pids'].items():
        assert pid, name
        for fd in os.listdir('/proc/%d/fd' % pid):
            try:
                target = os.readlink('/proc/%d/fd/%s' % (pid, fd))
            except OSError:
                continue
            inode = target[len('socket:['):-1] if target.startswith('socket:[') else None
            if inode in inodes:
                proto, local = inodes[inode]
                seen.append((name, proto, local))
    assert seen, 'no listening socket found at all: is /proc readable?'
    # 0100007F = 127.0.0.1 in /proc/net/tcp's little-endian hex
    assert [s for s in seen if not s[2].startswith('0100007F:')] == []
    print('listening sockets of the stack: %d, all on 127.0.0.1' % len(seen))


DISK_XML = """<disk type='network' device='disk'>
  <driver name='qemu' type='raw' cache='none' discard='unmap'/>
  <source protocol='rbd' name='{pool}/{image}'>
    <host name='{host}' port='{port}'/>
  </source>
  <auth username='{user}'><secret type='ceph' uuid='{secret}'/></auth>
  <target dev='sdb' bus='scsi'/>
  <serial>{serial}</serial>
</disk>
"""


def _guest(storage, name):
    res = subprocess.run([str(STACK), 'guest', 'create', name, '--memory', '96'],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def _remove_guest(name):
    subprocess.run([str(STACK), 'guest', 'remove', name], capture_output=True, timeout=120)


def test_ceph_volume_is_an_rbd_image_a_guest_can_write(storage, sessions, admin_cinder, pool,
                                                       tmp_path):
    figures = {}
    demo = cinder_for(sessions['demo'])
    t0 = time.monotonic()
    volume = demo.volumes.create(1, name='it-ceph-%s' % uuid.uuid4().hex[:6],
                                 volume_type=storage['volume_type'])
    image = 'volume-%s' % volume.id
    name = 'it-guest-%s' % uuid.uuid4().hex[:6]
    try:
        v = wait(lambda: (lambda x: x if x.status in ('available', 'error') else None)(
            admin_cinder.volumes.get(volume.id)), 90, 'volume %s available' % volume.id)
        assert v.status == 'available'
        figures['create'] = time.monotonic() - t0
        assert getattr(v, 'os-vol-host-attr:host').endswith('@ceph#ceph')
        assert image in pool.images()
        with pool.image(image) as img:
            assert img.size() == 1024 * MiB

        t1 = time.monotonic()
        guest = _guest(storage, name)
        figures['guest'] = time.monotonic() - t1
        dominfo = virsh(storage, 'dumpxml', name).stdout
        assert "type='qemu'" in dominfo and "model='virtio-scsi'" in dominfo
        assert guest['uuid'] in dominfo

        host, port = storage['ceph_mon_hosts'][0]
        disk = tmp_path / 'disk.xml'
        disk.write_text(DISK_XML.format(pool=storage['ceph_pool'], image=image, host=host,
                                        port=port, user=storage['ceph_user'],
                                        secret=storage['rbd_secret_uuid'],
                                        serial=volume.id[:20]))
        t2 = time.monotonic()
        virsh(storage, 'attach-device', name, str(disk), '--live')
        figures['attach'] = time.monotonic() - t2
        assert '%s/%s' % (storage['ceph_pool'], image) in virsh(storage, 'domblklist',
                                                                name).stdout
        info = virsh(storage, 'qemu-monitor-command', name, '--hmp', 'info block').stdout
        alias = [line.split()[-1] for line in info.splitlines() if 'Attached to:' in line][-1]
        # the guest runs no OS: QEMU's own qemu-io writes through the attached device
        virsh(storage, 'qemu-monitor-command', name, '--hmp',
              'qemu-io -d %s "write -P 0x5a %d 4096"' % (alias, MiB))
        virsh(storage, 'qemu-monitor-command', name, '--hmp', 'qemu-io -d %s "flush"' % alias)
        with pool.image(image) as img:
            assert img.read(MiB, 4096) == b'\x5a' * 4096
            assert img.read(0, 4096) == bytes(4096)
            assert list(img.watchers_list()), 'QEMU should watch the image while attached'

        t3 = time.monotonic()
        virsh(storage, 'detach-device', name, str(disk), '--live')
        wait(lambda: image not in virsh(storage, 'domblklist', name).stdout, 15,
             'the disk to leave the guest')   # virtio-scsi: no guest cooperation needed
        figures['detach'] = time.monotonic() - t3
        with pool.image(image) as img:
            wait(lambda: not list(img.watchers_list()), 15, 'QEMU to close the image')
    finally:
        _remove_guest(name)
        admin_cinder.volumes.delete(volume.id)
    t4 = time.monotonic()
    wait(lambda: image not in pool.images(), 60, 'Cinder to remove %s' % image)
    figures['delete'] = time.monotonic() - t4
    assert name not in virsh(storage, 'list', '--all', '--name').stdout.split()
    print('ceph volume: ' + ', '.join('%s %.2fs' % kv for kv in figures.items()))


def test_untyped_volumes_stay_on_the_fake_backend(storage, sessions, admin_cinder, volumes):
    """With the ceph backend enabled, the existing tests' volumes still go to fake."""
    vid = volumes.make(1)[0]
    assert getattr(admin_cinder.volumes.get(vid), 'os-vol-host-attr:host').endswith('@fake#fake')

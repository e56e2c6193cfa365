"""libvirtd + virtlogd (Debian 12: the monolithic libvirtd) with QEMU TCG, for
tools/storage-stack; the Ceph secret; small guests for tests.

libvirtd gets a configuration directory of its own: it runs in a private mount namespace
in which Paths.libvirt_etc is bind-mounted over /etc/libvirt. So its qemu.conf
(`user = "root"`, a path fixed at build time for qemu:///system) is ours, /etc/libvirt
is never edited, Debian's default network is not even seen (no networks at all), and
persistent secrets and domains land in our state directory. Sockets stay in /run/libvirt,
so qemu:///system works as usual for virsh and the libvirt bindings.
"""
import os
import uuid as uuidlib

import daemons
from stack_common import Failure
from stack_common import run
from stack_common import say
from stack_common import wait_until
from stack_common import write_private
from stack_common import write_text

URI = 'qemu:///system'
LIBVIRTD = '/usr/sbin/libvirtd'
VIRTLOGD = '/usr/sbin/virtlogd'
QEMU = '/usr/bin/qemu-system-x86_64'
SECRET_USAGE = 'client.cinder secret'
NS = 'urn:attachworker:storage-stack'     # the metadata namespace that marks our guests
QEMU_LOG_DIR = '/var/log/libvirt/qemu'

QEMU_CONF = """\
# written by tools/storage-stack; libvirtd sees this file as /etc/libvirt/qemu.conf
# (its own mount namespace). QEMU must run as root here: /dev/kvm is root-only, and as
# libvirt-qemu every start re-probes capabilities ("KVM was enabled when probing").
user = "root"
group = "root"
vnc_listen = "127.0.0.1"
spice_listen = "127.0.0.1"
"""
LIBVIRTD_CONF = """\
# written by tools/storage-stack: unix sockets only (libvirtd runs without --listen)
unix_sock_group = "root"
unix_sock_rw_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:{logs}/libvirtd.log"
"""
VIRTLOGD_CONF = 'log_outputs = "3:file:{logs}/virtlogd.log"\n'
GUEST_XML = """\
<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <metadata><aw:guest xmlns:aw="{ns}">{home}</aw:guest></metadata>
  <memory unit='MiB'>{memory}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>{qemu}</emulator>
    <controller type='scsi' index='0' model='virtio-scsi'/>
    <serial type='pty'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""
SECRET_XML = """\
<secret ephemeral='no' private='no'>
  <uuid>{uuid}</uuid>
  <usage type='ceph'><name>{usage}</name></usage>
  <description>client.cinder of tools/storage-stack</description>
</secret>
"""


def _files(paths):
    j = os.path.join
    return {'libvirtd_conf': j(paths.libvirt_etc, 'libvirtd.conf'),
            'qemu_conf': j(paths.libvirt_etc, 'qemu.conf'),
            'virtlogd_conf': j(paths.libvirt, 'virtlogd.conf'),
            'libvirtd_pid': j(paths.run, 'libvirtd.pid'),
            'virtlogd_pid': j(paths.run, 'virtlogd.pid')}


def _markers(paths):
    f = _files(paths)
    return {'libvirtd': (LIBVIRTD, '-f %s ' % f['libvirtd_conf']),
            'virtlogd': (VIRTLOGD, '-f %s ' % f['virtlogd_conf'])}


def pids(paths):
    f, m = _files(paths), _markers(paths)
    return {'libvirtd': daemons.running(f['libvirtd_pid'], m['libvirtd']),
            'virtlogd': daemons.running(f['virtlogd_pid'], m['virtlogd'])}


def virsh(*args, check=True, timeout=30):
    return run(['virsh', '-q', '-c', URI] + list(args), check=check, timeout=timeout)


def _foreign(paths, binary):
    ours = _markers(paths)['libvirtd' if binary == LIBVIRTD else 'virtlogd']
    name = os.path.basename(binary)
    return [p for p in daemons.find(name) if (daemons.cmdline(p) or [''])[0].endswith(name)
            and not daemons.is_ours(p, ours)]


def write_configs(paths):
    f = _files(paths)
    os.makedirs(paths.libvirt_etc, exist_ok=True)
    write_text(f['qemu_conf'], QEMU_CONF)
    write_text(f['libvirtd_conf'], LIBVIRTD_CONF.format(logs=paths.logs))
    write_text(f['virtlogd_conf'], VIRTLOGD_CONF.format(logs=paths.logs))


def _answers():
    try:
        return virsh('version', check=False, timeout=5).returncode == 0 or None
    except Failure:   # it accepts clients only once its drivers are initialised
        return None


def start(paths):
    f, m = _files(paths), _markers(paths)
    running = pids(paths)
    for binary in (VIRTLOGD, LIBVIRTD):
        if not running[os.path.basename(binary)]:
            other = _foreign(paths, binary)
            if other:
                raise Failure('%s is running but was not started by tools/storage-stack (pid %s: '
                              '%s); stop it first' % (binary, other[0],
                                                      ' '.join(daemons.cmdline(other[0]) or [])))
    write_configs(paths)
    if not running['virtlogd']:
        daemons.start([VIRTLOGD, '-d', '-p', f['virtlogd_pid'], '-f', f['virtlogd_conf']],
                      f['virtlogd_pid'], m['virtlogd'],
                      os.path.join(paths.logs, 'virtlogd.stdout'), daemonizes=True)
        say('  virtlogd started')
    if not running['libvirtd']:
        # the mount namespace lives as long as libvirtd (and the QEMUs it starts) do
        script = 'mount --bind "$0" /etc/libvirt && exec "$1" -d -p "$2" -f "$3"'
        daemons.start(['unshare', '--mount', '--propagation', 'private', '--', '/bin/sh', '-c',
                       script, paths.libvirt_etc, LIBVIRTD, f['libvirtd_pid'],
                       f['libvirtd_conf']],
                      f['libvirtd_pid'], m['libvirtd'],
                      os.path.join(paths.logs, 'libvirtd.stdout'), daemonizes=True, timeout=60)
        say('  libvirtd started (own /etc/libvirt: %s)' % paths.libvirt_etc)
    # the first start probes QEMU's capabilities (8-12 s); clients wait until it is done
    wait_until(_answers, 120, 'libvirtd to answer on %s (first start: QEMU probe)' % URI)
    for net in virsh('net-list', '--name', check=False).stdout.split():
        virsh('net-destroy', net, check=False)   # only ours can be seen; none should exist
        say('  libvirt network %s was active: stopped it (no networks here)' % net)


def _secret_value_matches(secret_uuid, key):
    res = virsh('secret-get-value', secret_uuid, check=False)
    return res.returncode == 0 and res.stdout.strip() == key


def ensure_secret(paths, secret_uuid, key):
    """Define the ceph secret (usage 'client.cinder secret', our uuid) and set its value
    from a 0600 file (never on a command line, never printed)."""
    for line in virsh('secret-list', check=False).stdout.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[1].strip() == 'ceph %s' % SECRET_USAGE \
                and parts[0] != secret_uuid:
            virsh('secret-undefine', parts[0])   # same usage, other uuid: an old one of ours
    xml = os.path.join(paths.libvirt, 'ceph-secret.xml')
    write_text(xml, SECRET_XML.format(uuid=secret_uuid, usage=SECRET_USAGE))
    virsh('secret-define', xml)
    if _secret_value_matches(secret_uuid, key):
        return 'unchanged'
    tmp = os.path.join(paths.libvirt, '.secret-value')
    write_private(tmp, key)   # base64 text: virsh decodes it (without --plain)
    try:
        virsh('secret-set-value', '--secret', secret_uuid, '--file', tmp)
    finally:
        os.unlink(tmp)
    if not _secret_value_matches(secret_uuid, key):
        raise Failure('the libvirt secret %s does not hold client.cinder\'s key' % secret_uuid)
    return 'set'


def _domains():
    return virsh('list', '--all', '--name', check=False).stdout.split()


def is_ours(name):
    res = virsh('dumpxml', name, check=False)
    return res.returncode == 0 and NS in res.stdout


def guest_create(paths, name, guest_uuid=None, memory=128):
    if name in _domains():
        raise Failure('a domain named %s exists already' % name)
    guest_uuid = guest_uuid or str(uuidlib.uuid4())
    xml = os.path.join(paths.guests, name + '.xml')
    write_text(xml, GUEST_XML.format(name=name, uuid=guest_uuid, ns=NS, home=paths.home,
                                     memory=int(memory), qemu=QEMU))
    write_text(os.path.join(paths.guests, name + '.uuid'), guest_uuid + '\n')
    virsh('create', xml)    # transient: nothing is kept once it is destroyed
    pid = daemons.read_pidfile('/run/libvirt/qemu/%s.pid' % name)
    return {'name': name, 'uuid': guest_uuid, 'pid': pid, 'memory_mib': int(memory),
            'log': os.path.join(QEMU_LOG_DIR, name + '.log')}


def guest_remove(paths, name):
    if name in _domains():
        if not is_ours(name):
            raise Failure('domain %s was not created by tools/storage-stack: left alone' % name)
        virsh('destroy', name, check=False)
        if name in _domains():
            virsh('undefine', name, check=False)
    return _forget(paths, name)


def _forget(paths, name):
    removed = False
    for ext in ('.uuid', '.xml'):
        try:
            os.unlink(os.path.join(paths.guests, name + ext))
            removed = True
        except FileNotFoundError:
            pass
    return removed


def our_guests(paths):
    try:
        return sorted(n[:-5] for n in os.listdir(paths.guests) if n.endswith('.uuid'))
    except FileNotFoundError:
        return []


def health(paths, secret_uuid, key):
    out = {}
    running = pids(paths)
    for name, pid in running.items():
        out[name] = (bool(pid), 'pid %s' % pid if pid else 'not running')
    if not running['libvirtd']:
        return out
    qemu_conf = _files(paths)['qemu_conf']
    try:
        seen = os.stat('/proc/%d/root/etc/libvirt/qemu.conf' % running['libvirtd'])
        mine = os.stat(qemu_conf)
        own = (seen.st_dev, seen.st_ino) == (mine.st_dev, mine.st_ino)
    except OSError:
        own = False
    out['libvirt-config'] = (own, ('its /etc/libvirt is %s (QEMU as root)' % paths.libvirt_etc)
                             if own else 'libvirtd does not see our qemu.conf')
    api = virsh('version', check=False, timeout=10)
    out['libvirt-api'] = (api.returncode == 0, '%s answers' % URI if api.returncode == 0
                          else api.stderr.strip()[-200:])
    if api.returncode != 0:
        return out
    nets = virsh('net-list', '--name', check=False).stdout.split()
    out['libvirt-networks'] = (not nets, 'none active' if not nets else 'ACTIVE: %s' % nets)
    ok = bool(key) and _secret_value_matches(secret_uuid, key)
    out['libvirt-secret'] = (ok, 'ceph secret %s (%s) %s' % (
        secret_uuid, SECRET_USAGE, 'holds client.cinder\'s key' if ok else 'missing or stale'))
    return out


def stop(paths, log=say):
    """Our guests, then libvirtd, then virtlogd; QEMUs of our guests that outlived it."""
    if pids(paths)['libvirtd']:
        for name in _domains():
            if is_ours(name):
                guest_remove(paths, name)
                log('destroyed guest %s' % name)
            else:
                log('domain %s is not ours: left running (libvirtd finds it again)' % name)
    f, m = _files(paths), _markers(paths)
    daemons.stop_pidfile(f['libvirtd_pid'], m['libvirtd'], 'libvirtd', log=log)
    daemons.sweep(m['libvirtd'], 'libvirtd', log=log)
    for name in our_guests(paths):
        with open(os.path.join(paths.guests, name + '.uuid')) as fh:
            guest_uuid = fh.read().strip()
        daemons.sweep((QEMU, '-uuid %s ' % guest_uuid), 'qemu of guest %s' % name, log=log)
        _forget(paths, name)
    daemons.stop_pidfile(f['virtlogd_pid'], m['virtlogd'], 'virtlogd', log=log)
    daemons.sweep(m['virtlogd'], 'virtlogd', log=log)

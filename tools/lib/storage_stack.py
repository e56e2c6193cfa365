"""tools/storage-stack: a single-node Ceph + libvirt/QEMU beside tools/local-cloud.

    tools/storage-stack up [--fresh]     install what is missing, bring everything up
                                         (a quick no-op when it already is healthy)
    tools/storage-stack down             stop only what this tool started (OSD before mon)
    tools/storage-stack status           exit 0 when healthy, 3 otherwise
    tools/storage-stack guest create NAME [--uuid UUID] [--memory MIB]   (JSON on stdout)
    tools/storage-stack guest remove NAME
    tools/storage-stack guest list

Home: ${ATTACHWORKER_STORAGE_HOME:-${ATTACHWORKER_CLOUD_HOME:-/var/tmp/attachworker-cloud}/storage};
outputs for tests: <home>/storage.json. Ceph and libvirt are contacted on 127.0.0.1 and
unix sockets only. Needs root (apt, libvirtd, mount namespace).
"""
import argparse
import fcntl
import json
import os
import re
import sys
import time
import uuid

import ceph_stack
import cinder_backend
import daemons
import host_setup
import libvirt_stack
from stack_common import T0
from stack_common import Failure
from stack_common import Paths
from stack_common import Phases
from stack_common import say
from stack_common import wait_until
from stack_common import write_text

UNHEALTHY = 3


def secret_uuid(paths):
    """The rbd_secret_uuid: made once per home, kept across re-creations of the cluster."""
    try:
        with open(paths.secret_uuid_file) as f:
            return str(uuid.UUID(f.read().strip()))
    except (FileNotFoundError, ValueError):
        value = str(uuid.uuid4())
        write_text(paths.secret_uuid_file, value + '\n')
        return value


def _key(paths):
    try:
        return ceph_stack.cinder_key(paths)
    except (OSError, Failure):
        return None


def checks(paths):
    """{name: (ok or None for n/a, text)} for every part."""
    out = {}
    missing = host_setup.missing_packages()
    out['packages'] = (not missing, 'missing: %s' % ' '.join(missing) if missing
                       else 'all %d installed' % len(host_setup.PACKAGES))
    linked = host_setup.bindings_linked(paths.project_venv)
    out['venv-bindings'] = (linked, 'rados/rbd %s in %s' % ('linked' if linked else 'NOT linked',
                                                            paths.project_venv))
    if linked:
        out.update(ceph_stack.health(paths))
    out.update(libvirt_stack.health(paths, secret_uuid(paths), _key(paths)))
    out['cinder-snippet'] = (os.path.exists(paths.cinder_snippet), paths.cinder_snippet)
    out.update(cinder_backend.health(paths))
    return out


def print_checks(out):
    for name, (ok, text) in out.items():
        print('  %-17s %-5s %s' % (name, {True: 'ok', False: 'DOWN', None: 'n/a'}[ok], text))
    return all(ok is not False for ok, _ in out.values())


def anything_running(paths):
    return any(ceph_stack.pids(paths).values()) or any(libvirt_stack.pids(paths).values())


def write_outputs(paths, state, phases=None, cinder_note=''):
    old = {}
    if os.path.exists(paths.outputs):
        with open(paths.outputs) as f:
            old = json.load(f)
    res = {
        'state': state,
        'home': paths.home,
        'ceph_conf': paths.ceph_conf,
        'ceph_keyring': paths.cinder_keyring,
        'ceph_admin_keyring': paths.admin_keyring,
        'ceph_user': ceph_stack.USER,
        'ceph_pool': ceph_stack.POOL,
        'ceph_mon_hosts': [[ceph_stack.MON_HOST, 6789]],
        'rbd_secret_uuid': secret_uuid(paths),
        'libvirt_uri': libvirt_stack.URI,
        'libvirt_secret_usage': libvirt_stack.SECRET_USAGE,
        'qemu_log_dir': libvirt_stack.QEMU_LOG_DIR,
        'volume_type': cinder_backend.VOLUME_TYPE,
        'cinder_backend': cinder_backend.BACKEND,
        'cinder_backend_conf': paths.cinder_snippet,
        'cinder_note': cinder_note,
        'logs': paths.logs,
        'pids': dict(ceph_stack.pids(paths), **libvirt_stack.pids(paths)),
        'bringup_seconds': phases.summary() if phases else old.get('bringup_seconds'),
        'written_at': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
    }
    write_text(paths.outputs, json.dumps(res, indent=2, sort_keys=True) + '\n')


def _ceph_healthy(paths, last=None):
    h = ceph_stack.health(paths)
    if last is not None:
        last[:] = ['%s: %s' % (name, text) for name, (ok, text) in h.items() if not ok]
    return all(ok for ok, _ in h.values()) and 'ceph-health' in h


def _wait_ceph(paths, timeout):
    last = []
    try:
        wait_until(lambda: _ceph_healthy(paths, last), timeout,
                   lambda: 'Ceph HEALTH_OK (now: %s)' % ('; '.join(last)[:150] or 'no answer'),
                   every=3)
        return True
    except Failure:
        say('  Ceph after %ds: %s' % (timeout, '; '.join(last) or 'no answer'))
        return False


def ceph_started(paths):
    """When the newest of our running Ceph daemons started (None: none runs)."""
    times = [daemons.started_at(pid) for pid in ceph_stack.pids(paths).values() if pid]
    return max((t for t in times if t is not None), default=None)


def bring_up_ceph(paths, fresh):
    if not fresh and ceph_stack.exists(paths):
        if _ceph_healthy(paths):
            say('  Ceph is up and HEALTH_OK; keeping it')
            return
        try:
            ceph_stack.start_existing(paths)
            if _wait_ceph(paths, 60):
                return
            say('  the existing cluster did not become healthy: creating a new one')
        except ceph_stack.DataLost as exc:
            say('  %s: creating a new cluster (Cinder\'s ceph volumes of before are gone)'
                % exc)
    ceph_stack.create(paths)
    if not _wait_ceph(paths, 120):
        for name, (ok, text) in ceph_stack.health(paths).items():
            say('    %s: %s %s' % (name, 'ok' if ok else 'DOWN', text))
        raise Failure('Ceph did not reach HEALTH_OK; see %s/ceph-*.log' % paths.logs)


def cmd_up(paths, fresh):
    phases = Phases()
    paths.makedirs()
    if not fresh and os.path.exists(paths.outputs) and anything_running(paths):
        out = checks(paths)
        if all(ok is not False for ok, _ in out.values()):
            write_outputs(paths, 'up', cinder_note=_cinder_note(out))
            say('already up and healthy; nothing to do (checked in %.1fs); outputs: %s'
                % (time.monotonic() - T0, paths.outputs))
            return 0
    sid = secret_uuid(paths)
    with phases.phase('packages', 'checking Debian packages and rados/rbd in %s'
                      % paths.project_venv):
        host_setup.ensure_packages(os.path.join(paths.logs, 'apt.log'))
        say('  rados/rbd in the project venv: %s' % host_setup.link_bindings(
            paths.project_venv, 'the project venv ' + paths.project_venv))
    with phases.phase('ceph', 'Ceph on 127.0.0.1 (mon, mgr, one memstore OSD) under %s'
                      % paths.ceph):
        bring_up_ceph(paths, fresh)
    with phases.phase('libvirt', 'libvirtd + virtlogd (QEMU TCG, QEMU as root), ceph secret'):
        libvirt_stack.start(paths)
        state = libvirt_stack.ensure_secret(paths, sid, ceph_stack.cinder_key(paths))
        say('  secret %s (usage "%s"): value %s' % (sid, libvirt_stack.SECRET_USAGE, state))
    with phases.phase('cinder', 'Cinder backend "%s" and volume type "%s"'
                      % (cinder_backend.BACKEND, cinder_backend.VOLUME_TYPE)):
        cinder_backend.write_snippet(paths, sid, ceph_stack.POOL, ceph_stack.USER)
        note = cinder_backend.ensure(paths, ceph_started(paths))
        say('  ' + note)
    write_outputs(paths, 'up', phases, note)
    say('phase timings: %s' % phases.summary())
    out = checks(paths)
    healthy = print_checks(out)
    say('outputs: %s' % paths.outputs)
    say('up in %.1fs%s; stop with: tools/storage-stack down'
        % (time.monotonic() - T0, '' if healthy else ' but NOT healthy'))
    return 0 if healthy else UNHEALTHY


def _cinder_note(out):
    return out.get('cinder', (None, ''))[1] if 'cinder' in out else ''


def cmd_down(paths):
    was = anything_running(paths)
    if cinder_backend.remove_snippet(paths):
        say('removed %s: cinder-volume keeps the ceph backend until it restarts (its calls to '
            'the cluster then fail)' % paths.cinder_snippet)
    libvirt_stack.stop(paths)
    ceph_stack.stop(paths)
    if os.path.exists(paths.outputs):
        write_outputs(paths, 'down')
    say('down in %.1fs (data and logs kept under %s)' % (time.monotonic() - T0, paths.home)
        if was else 'nothing was running under %s' % paths.home)
    return 0


def cmd_status(paths):
    if not os.path.isdir(paths.home) or not anything_running(paths):
        say('down: nothing of the storage stack runs under %s' % paths.home)
        return UNHEALTHY
    say('status of the storage stack under %s:' % paths.home)
    if print_checks(checks(paths)):
        say('all healthy; outputs: %s' % paths.outputs)
        return 0
    say('NOT healthy (tools/storage-stack up repairs it)')
    return UNHEALTHY


def cmd_guest(paths, args):
    if args.action == 'list':
        for name in libvirt_stack.our_guests(paths):
            print(name)
        return 0
    if not libvirt_stack.pids(paths)['libvirtd']:
        raise Failure('libvirtd of the storage stack is not running: tools/storage-stack up')
    if not re.fullmatch(r'[A-Za-z0-9][A-Za-z0-9_.-]{0,63}', args.name):
        raise Failure('a guest name is 1-64 of A-Z a-z 0-9 _ . - (got %r)' % args.name)
    if args.action == 'create':
        if not 32 <= args.memory <= 1024:
            raise Failure('--memory is in MiB, 32-1024 (64-128 is plenty for a guest with no OS)')
        print(json.dumps(libvirt_stack.guest_create(paths, args.name, args.uuid, args.memory)))
        return 0
    if not libvirt_stack.guest_remove(paths, args.name):
        say('no guest %s of ours' % args.name)
    return 0


def take_lock(paths):
    paths.makedirs()
    fd = os.open(paths.lock, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        say('waiting for another tools/storage-stack to finish (lock %s)' % paths.lock)
        fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def parse(argv):
    p = argparse.ArgumentParser(prog='tools/storage-stack', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='cmd', required=True)
    up = sub.add_parser('up')
    up.add_argument('--fresh', action='store_true', help='a new cluster even if one is there')
    sub.add_parser('down')
    sub.add_parser('status')
    guest = sub.add_parser('guest')
    gsub = guest.add_subparsers(dest='action', required=True)
    create = gsub.add_parser('create')
    create.add_argument('name')
    create.add_argument('--uuid', default=None)
    create.add_argument('--memory', type=int, default=128, help='MiB (64-128 is plenty)')
    gsub.add_parser('remove').add_argument('name')
    gsub.add_parser('list')
    return p.parse_args(argv)


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        say('ERROR: run as root (apt, libvirtd, a mount namespace)')
        return 1
    paths = Paths()
    try:
        if args.cmd == 'status':
            return cmd_status(paths)
        if args.cmd == 'down' and not os.path.isdir(paths.home):
            say('nothing is up under %s' % paths.home)
            return 0
        take_lock(paths)
        if args.cmd == 'up':
            return cmd_up(paths, args.fresh)
        if args.cmd == 'down':
            return cmd_down(paths)
        return cmd_guest(paths, args)
    except Failure as exc:
        say('ERROR: %s' % exc)
        return 1

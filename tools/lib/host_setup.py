"""Debian packages of the storage stack, and Debian's rados/rbd bindings in our venvs."""
import os
import re
import subprocess
import sys
import time

from stack_common import Failure
from stack_common import run
from stack_common import say

PACKAGES = ('ceph-mon', 'ceph-osd', 'ceph-mgr', 'ceph-common', 'python3-rbd', 'python3-rados',
            'libvirt-daemon-system', 'libvirt-clients', 'libvirt-daemon-driver-qemu',
            'qemu-system-x86', 'qemu-block-extra', 'qemu-utils')
POLICY_RC_D = '/usr/sbin/policy-rc.d'
DIST = '/usr/lib/python3/dist-packages'
EXT_SUFFIX = '.cpython-311-x86_64-linux-gnu.so'   # what Debian 12's python3-rados ships
BINDINGS = ('rados', 'rbd')
LOCK_WAIT = 900


def missing_packages(packages=PACKAGES):
    res = run(['dpkg-query', '-W', '-f', '${Package} ${db:Status-Status}\n'] + list(packages),
              check=False)
    installed = {line.split()[0] for line in res.stdout.splitlines()
                 if line.endswith(' installed')}
    return [p for p in packages if p not in installed]


def _lock_holder(text):
    m = re.search(r'held by process (\d+) \(([^)]*)\)', text)
    return ('pid %s (%s)' % m.groups()) if m else 'another apt/dpkg'


def _apt(args, log):
    env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
    with open(log, 'a') as out:
        out.write('--- %s apt-get %s\n' % (time.strftime('%H:%M:%S'), ' '.join(args)))
        out.flush()
        res = subprocess.run(['apt-get'] + args, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        out.write(res.stdout)
    return res.returncode, res.stdout


def _apt_waiting_for_lock(args, log):
    """apt-get ARGS; while dpkg's lock is held by someone else, wait (progress lines)."""
    t0 = time.monotonic()
    noted = 0.0
    while True:
        rc, text = _apt(args, log)
        if rc == 0 or 'Could not get lock' not in text and 'Unable to acquire' not in text:
            return rc, text
        waited = time.monotonic() - t0
        if waited > LOCK_WAIT:
            raise Failure('the dpkg lock has been held by %s for %.0fs' % (_lock_holder(text),
                                                                       waited))
        if waited - noted >= 10 or not noted:
            say('  ... dpkg is busy (%s); waiting (%.0fs)' % (_lock_holder(text), waited))
            noted = waited or 0.1
        time.sleep(3)


def ensure_packages(log, packages=PACKAGES):
    """Install what is missing with --no-install-recommends; no service may start
    (policy-rc.d says 101 while we install); apt-get update only if the install fails."""
    missing = missing_packages(packages)
    if not missing:
        say('  packages: all %d present' % len(packages))
        return []
    say('  apt-get install --no-install-recommends %s (log: %s)' % (' '.join(missing), log))
    made_policy = not os.path.exists(POLICY_RC_D)
    if made_policy:
        with open(POLICY_RC_D, 'w') as f:
            f.write('#!/bin/sh\n# written by tools/storage-stack while it installs\nexit 101\n')
        os.chmod(POLICY_RC_D, 0o755)
    args = ['install', '-y', '-q', '--no-install-recommends',
            '-o', 'Dpkg::Options::=--force-confold'] + missing
    try:
        rc, text = _apt_waiting_for_lock(args, log)
        if rc != 0:
            say('  install failed; running apt-get update and trying again')
            _apt_waiting_for_lock(['update', '-q'], log)
            rc, text = _apt_waiting_for_lock(args, log)
        if rc != 0:
            raise Failure('apt-get install failed (see %s): %s' % (log, text.strip()[-600:]))
    finally:
        if made_policy:
            os.unlink(POLICY_RC_D)
    still = missing_packages(packages)
    if still:
        raise Failure('still not installed after apt-get: %s (see %s)' % (' '.join(still), log))
    return missing


def venv_python_info(venv):
    py = os.path.join(venv, 'bin', 'python')
    code = ('import sys, sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX")); '
            'print(sysconfig.get_paths()["purelib"]); print(sys.version.split()[0])')
    res = run([py, '-c', code], check=False, timeout=60)
    if res.returncode != 0:
        raise Failure('%s does not run: %s' % (py, res.stderr.strip()[-300:]))
    suffix, purelib, version = res.stdout.split()
    return py, suffix, purelib, version


def link_bindings(venv, label):
    """Symlink Debian's rados/rbd extension modules (and nothing else of dist-packages)
    into venv's site-packages; the venv's python must have the same ABI (3.11)."""
    py, suffix, purelib, version = venv_python_info(venv)
    if suffix != EXT_SUFFIX:
        raise Failure('%s has Python %s (extension suffix %s): Debian\'s rados/rbd are built '
                      'for %s, they cannot be loaded there' % (label, version, suffix,
                                                               EXT_SUFFIX))
    changed = False
    for name in BINDINGS:
        src = os.path.join(DIST, name + EXT_SUFFIX)
        dst = os.path.join(purelib, name + EXT_SUFFIX)
        if not os.path.exists(src):
            raise Failure('%s is missing (python3-%s not installed?)' % (src, name))
        if os.path.islink(dst) and os.readlink(dst) == src:
            continue
        if os.path.lexists(dst):
            os.unlink(dst)
        os.symlink(src, dst)
        changed = True
    if changed or venv == sys.prefix:
        res = run([py, '-c', 'import rados, rbd'], check=False, timeout=60)
        if res.returncode != 0:
            raise Failure('rados/rbd do not import in %s: %s' % (label, res.stderr.strip()[-300:]))
    return 'Python %s, %s' % (version, 'linked' if changed else 'already linked')


def bindings_linked(venv):
    """True when both links exist and point at Debian's files (no python started)."""
    lib = os.path.join(venv, 'lib')
    try:
        pydirs = [d for d in os.listdir(lib) if d.startswith('python3.11')]
    except FileNotFoundError:
        return False
    for d in pydirs:
        site = os.path.join(lib, d, 'site-packages')
        if all(os.path.exists(os.path.join(DIST, n + EXT_SUFFIX)) and
               os.path.realpath(os.path.join(site, n + EXT_SUFFIX)) ==
               os.path.join(DIST, n + EXT_SUFFIX) for n in BINDINGS):
            return True
    return False

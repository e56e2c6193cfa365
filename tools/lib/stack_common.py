"""What every part of tools/storage-stack shares: where things live, messages, phase
timings, waiting with progress lines, running commands."""
import contextlib
import os
import socket
import subprocess
import time

TAG = '[storage-stack]'
T0 = time.monotonic()


def say(msg=''):
    print('%s %s' % (TAG, msg) if msg else '', flush=True)


class Failure(Exception):
    """A step failed; the message says what to look at."""


class Paths:
    """Everything of the stack lives under one home (nothing in /etc/ceph, nothing of
    ours in /etc/libvirt: libvirtd sees libvirt/etc there, in its own mount namespace)."""

    def __init__(self, home=None, cloud_home=None):
        self.cloud_home = cloud_home or os.environ.get(
            'ATTACHWORKER_CLOUD_HOME', '/var/tmp/attachworker-cloud')
        self.home = home or os.environ.get(
            'ATTACHWORKER_STORAGE_HOME', os.path.join(self.cloud_home, 'storage'))
        j = os.path.join
        self.logs = j(self.home, 'logs')
        self.run = j(self.home, 'run')                      # PID files, admin sockets
        self.ceph = j(self.home, 'ceph')
        self.ceph_conf = j(self.ceph, 'ceph.conf')
        self.admin_keyring = j(self.ceph, 'ceph.client.admin.keyring')
        self.cinder_keyring = j(self.ceph, 'ceph.client.cinder.keyring')
        self.libvirt = j(self.home, 'libvirt')
        self.libvirt_etc = j(self.libvirt, 'etc')           # /etc/libvirt as libvirtd sees it
        self.guests = j(self.libvirt, 'guests')             # NAME.uuid of guests we created
        self.secret_uuid_file = j(self.home, 'rbd_secret_uuid')
        self.cinder_snippet = j(self.home, 'cinder-ceph.conf')   # read by tools/local-cloud
        self.outputs = j(self.home, 'storage.json')
        self.lock = j(self.home, '.lock')
        self.repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.project_venv = j(self.repo, '.venv')
        self.cloud_venv = j(self.cloud_home, 'venv')
        self.cloud_env = j(self.cloud_home, 'cloud.env')
        self.local_cloud = j(self.repo, 'tools', 'local-cloud')

    def makedirs(self):
        for d in (self.home, self.logs, self.run, self.ceph, self.libvirt_etc, self.guests):
            os.makedirs(d, exist_ok=True)
        os.chmod(self.home, 0o700)   # keyrings and the libvirt secret store live below


class Phases:
    """`with phases.phase('ceph', 'bringing up Ceph'):` prints the time each took."""

    def __init__(self):
        self.seconds = {}

    @contextlib.contextmanager
    def phase(self, name, text):
        say(text)
        t0 = time.monotonic()
        yield
        self.seconds[name] = round(time.monotonic() - t0, 1)
        say('  ... done in %.1fs' % self.seconds[name])

    def summary(self):
        parts = ['total=%.1f' % (time.monotonic() - T0)]
        parts += ['%s=%.1f' % kv for kv in self.seconds.items()]
        return ','.join(parts)


def wait_until(predicate, timeout, what, every=3.0, interval=0.25):
    """Poll predicate until it returns something true; a progress line every `every` s
    (what: a text, or a function giving one, e.g. the latest state)."""
    t0 = time.monotonic()
    next_note = t0 + every
    while True:
        value = predicate()
        if value:
            return value
        now = time.monotonic()
        text = what() if callable(what) else what
        if now - t0 > timeout:
            raise Failure('timed out after %.0fs waiting for %s' % (timeout, text))
        if now >= next_note:
            say('  ... still waiting for %s (%.0fs)' % (text, now - t0))
            next_note = now + every
        time.sleep(interval)


def run(argv, check=True, timeout=120, input=None, env=None):
    """Run a command, capture its output; on failure raise Failure with its stderr."""
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                             input=input, env=env)
    except subprocess.TimeoutExpired:
        raise Failure('%s timed out after %ss' % (' '.join(argv[:3]), timeout)) from None
    if check and res.returncode != 0:
        raise Failure('%s failed (exit %d): %s' % (' '.join(argv[:4]), res.returncode,
                                                  (res.stderr or res.stdout).strip()[-800:]))
    return res


def port_open(port, host='127.0.0.1'):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def write_private(path, text, mode=0o600):
    """Write a file that only root may read (created with that mode, then renamed)."""
    tmp = path + '.tmp'
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, 'w') as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def write_text(path, text):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


def read_env_file(path):
    values = {}
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith('#') and '=' in line:
                    key, value = line.split('=', 1)
                    values[key.replace('export ', '').strip()] = value.strip()
    except FileNotFoundError:
        return {}
    return values

"""Cinder's own RBD driver as a second backend `ceph` of tools/local-cloud's Cinder.

The stack writes Paths.cinder_snippet while it is up; tools/local-cloud gives that file
to cinder-volume as a second --config-file whenever it exists (enabled_backends =
fake,ceph and a [ceph] section). Here: link rados/rbd into the cloud's venv, make the
default type stay on `fake` (volume_backend_name=fake on __DEFAULT__: the capacity
weigher would otherwise send untyped volumes to ceph, as fake reports 'infinite'),
create the public type `ceph`, restart cinder-volume if it runs without the file or
started before the Ceph that runs now, and wait until the scheduler knows the pool.

Cinder sets a backend's driver up once, when cinder-volume starts: an RBD driver that
could not reach its cluster then stays uninitialised (its pool is never reported) until
cinder-volume restarts. tools/local-cloud starts cinder-volume with the file whenever the
file is there, also when the Ceph it names is down (a machine restarted, a cluster
recreated), so `ensure` compares start times rather than trusting the command line.
"""
import datetime
import os
import subprocess
import time

import daemons
import host_setup
from stack_common import Failure
from stack_common import port_open
from stack_common import read_env_file
from stack_common import say
from stack_common import wait_until
from stack_common import write_text

BACKEND = 'ceph'
VOLUME_TYPE = 'ceph'
DEFAULT_TYPE = '__DEFAULT__'
DEFAULT_BACKEND = 'fake'

SNIPPET = """\
# written by tools/storage-stack while it is up (removed by its down); tools/local-cloud
# passes it to cinder-volume as a second --config-file, after its cinder.conf
[DEFAULT]
enabled_backends = {default_backend},{backend}

[{backend}]
volume_driver = cinder.volume.drivers.rbd.RBDDriver
volume_backend_name = {backend}
rbd_cluster_name = ceph
rbd_ceph_conf = {ceph_conf}
rbd_pool = {pool}
rbd_user = {user}
# QEMU/libvirt find client.{user}'s key through this libvirt secret
rbd_secret_uuid = {secret_uuid}
# fail within seconds, not librados' 300 s, while the cluster is down
rados_connect_timeout = 5
rados_connection_retries = 1
rados_connection_interval = 1
report_discard_supported = true
"""


def write_snippet(paths, secret_uuid, pool, user):
    write_text(paths.cinder_snippet, SNIPPET.format(
        default_backend=DEFAULT_BACKEND, backend=BACKEND, ceph_conf=paths.ceph_conf, pool=pool,
        user=user, secret_uuid=secret_uuid))


def remove_snippet(paths):
    try:
        os.unlink(paths.cinder_snippet)
        return True
    except FileNotFoundError:
        return False


def cloud_env(paths):
    """cloud.env of tools/local-cloud when its Keystone and cinder-api listen, else None."""
    env = read_env_file(paths.cloud_env)
    if not env.get('ADMIN_PASSWORD') or not (port_open(5000) and port_open(8776)):
        return None
    return env


def admin_cinder(env):
    from cinderclient import client as cinder_client
    from keystoneauth1 import session as ks_session
    from keystoneauth1.identity import v3
    auth = v3.Password(auth_url=env['OS_AUTH_URL'], username='admin',
                       password=env['ADMIN_PASSWORD'], project_name='admin',
                       user_domain_id='default', project_domain_id='default')
    return cinder_client.Client('3.0', session=ks_session.Session(auth=auth, timeout=30),
                                region_name=env.get('OS_REGION_NAME', 'RegionOne'))


def _volume_pidfile(paths):
    return os.path.join(paths.cloud_home, 'state', 'pids', 'cinder-volume.pid')


def volume_process(paths):
    """(pid, has our snippet) of the cloud's cinder-volume (its marker, as local-cloud's)."""
    pid = daemons.running(_volume_pidfile(paths),
                          os.path.join(paths.cloud_venv, 'bin', 'cinder-volume') + ' ')
    return pid, bool(pid) and daemons.is_ours(pid, '--config-file %s' % paths.cinder_snippet)


def stale(volume_started, ceph_started):
    """True when cinder-volume started before the Ceph daemons that run now: its ceph
    backend was set up against a cluster that was down or is gone (unknown times: False)."""
    return volume_started is not None and ceph_started is not None and \
        volume_started < ceph_started


def _types(cinder):
    return {t.name: t for t in cinder.volume_types.list(is_public=None)}


def _pool_reported(cinder, since=None):
    """The ceph pool's name once the scheduler knows it; with ``since`` (epoch s), only
    from a report made after it: the scheduler keeps a backend's last capabilities
    across a cinder-volume restart, also when the new driver failed its set-up."""
    for pool in cinder.pools.list(detailed=since is not None):
        if not pool.name.endswith('@%s#%s' % (BACKEND, BACKEND)):
            continue
        if since is None:
            return pool.name
        stamp = (pool._info.get('capabilities') or {}).get('timestamp')
        try:   # naive UTC, e.g. 2026-12-01T16:48:18.446153
            reported = datetime.datetime.fromisoformat(stamp).replace(
                tzinfo=datetime.timezone.utc).timestamp()
        except (TypeError, ValueError):
            continue
        if reported >= since:
            return pool.name
    return None


def _local_cloud(paths, *args):
    res = subprocess.run([paths.local_cloud] + list(args), capture_output=True, text=True)
    for line in (res.stdout + res.stderr).splitlines():
        say('    ' + line)
    if res.returncode != 0:
        raise Failure('tools/local-cloud %s failed' % ' '.join(args))


def _restart_volume(paths, why):
    """Returns when it restarted (epoch s): what a fresh pool report must follow."""
    since = time.time() - 1   # the report's clock is this machine's: a second's slack
    say('  restarting cinder-volume: %s (tools/local-cloud stop-service / start-service '
        'cinder-volume)' % why)
    _local_cloud(paths, 'stop-service', 'cinder-volume')
    _local_cloud(paths, 'start-service', 'cinder-volume')
    if not volume_process(paths)[1]:
        raise Failure('cinder-volume runs without %s: is tools/local-cloud the one of this '
                      'change?' % paths.cinder_snippet)
    return since


def ensure(paths, ceph_started=None):
    """Everything Cinder needs for the ceph backend; returns a one-line summary.

    ceph_started: when the newest of the Ceph daemons that run now started (epoch s)."""
    if os.path.isdir(paths.cloud_venv):
        say('  rados/rbd in the cloud venv: %s'
            % host_setup.link_bindings(paths.cloud_venv, 'the cloud venv ' + paths.cloud_venv))
    env = cloud_env(paths)
    if env is None:
        return ('the local cloud is not up: cinder-volume gets the ceph backend at its next '
                'start; run tools/storage-stack up again after tools/local-cloud up')
    cinder = admin_cinder(env)
    types = _types(cinder)
    default = types[DEFAULT_TYPE]
    if default.get_keys().get('volume_backend_name') != DEFAULT_BACKEND:
        default.set_keys({'volume_backend_name': DEFAULT_BACKEND})
        say('  volume type %s: volume_backend_name=%s (untyped volumes stay on fake)'
            % (DEFAULT_TYPE, DEFAULT_BACKEND))
    vtype = types.get(VOLUME_TYPE) or cinder.volume_types.create(
        VOLUME_TYPE, description='RBD volumes on the Ceph of tools/storage-stack',
        is_public=True)
    if vtype.get_keys().get('volume_backend_name') != BACKEND:
        vtype.set_keys({'volume_backend_name': BACKEND})
        say('  volume type %s created (volume_backend_name=%s)' % (VOLUME_TYPE, BACKEND))
    pid, has_snippet = volume_process(paths)
    since = None
    if not has_snippet:
        since = _restart_volume(paths, 'it runs without the %s backend' % BACKEND)
    elif stale(daemons.started_at(pid), ceph_started):
        since = _restart_volume(paths, 'it started before this Ceph, so its %s backend '
                                'could not be set up (Cinder does not retry a driver\'s '
                                'set-up)' % BACKEND)
    what = 'Cinder\'s scheduler to report the %s pool' % BACKEND
    try:
        pool = wait_until(lambda: _pool_reported(cinder, since), 60, what, every=5,
                          interval=1)
    except Failure:
        # the set-up failed for a reason start times do not show (Ceph not yet serving
        # when cinder-volume started after it): once more, from a fresh start
        since = _restart_volume(paths, 'no %s pool after 60s (its log: %s)' % (
            BACKEND, os.path.join(paths.cloud_home, 'logs', 'cinder-volume.log')))
        pool = wait_until(lambda: _pool_reported(cinder, since), 90, what, every=5,
                          interval=1)
    return 'backend pool %s, volume type %s' % (pool, VOLUME_TYPE)


def health(paths):
    out = {}
    if os.path.isdir(paths.cloud_venv):
        linked = host_setup.bindings_linked(paths.cloud_venv)
        out['cinder-bindings'] = (linked, 'rados/rbd %s in %s' % (
            'linked' if linked else 'NOT linked', paths.cloud_venv))
    else:
        out['cinder-bindings'] = (None, 'no cloud venv yet (%s)' % paths.cloud_venv)
    env = cloud_env(paths)
    if env is None:
        out['cinder'] = (None, 'local cloud not up: not checked')
        return out
    pid, has_snippet = volume_process(paths)
    out['cinder-volume'] = (has_snippet, 'pid %s %s' % (pid, 'reads %s' % paths.cinder_snippet
                                                        if has_snippet else 'WITHOUT the ceph '
                                                        'backend (tools/storage-stack up)'))
    try:
        cinder = admin_cinder(env)
        types = _types(cinder)
        spec = types[VOLUME_TYPE].get_keys() if VOLUME_TYPE in types else {}
        out['cinder-type'] = (spec.get('volume_backend_name') == BACKEND,
                              'volume type %s %s' % (VOLUME_TYPE, spec or 'MISSING'))
        dspec = types[DEFAULT_TYPE].get_keys()
        out['cinder-default'] = (dspec.get('volume_backend_name') == DEFAULT_BACKEND,
                                 'volume type %s %s' % (DEFAULT_TYPE, dspec))
        pool = _pool_reported(cinder)
        out['cinder-pool'] = (bool(pool), pool or 'the scheduler has no %s pool' % BACKEND)
    except Exception as exc:  # noqa: BLE001 - any Keystone/Cinder error makes it unhealthy
        out['cinder-api'] = (False, 'Cinder API: %s' % str(exc)[:200])
    return out

"""A single-node Ceph on 127.0.0.1 for tools/storage-stack: one mon, one mgr, one OSD on
memstore, pool `volumes`, cephx, and a client.cinder key limited to that pool.

All of it under Paths.ceph / .logs / .run (conf via --conf, never /etc/ceph). The daemons
fork themselves and write their PID files (pid_file); each is ours while its cmdline has
its binary and `--conf <our conf> -i <id>`. Queries go through the rados binding (Debian's
python3-rados, linked into the project's venv by host_setup) as client.admin.
"""
import json
import os
import shutil
import uuid

import daemons
from stack_common import Failure
from stack_common import port_open
from stack_common import run
from stack_common import say
from stack_common import wait_until
from stack_common import write_private
from stack_common import write_text

POOL = 'volumes'
USER = 'cinder'
MON_HOST = '127.0.0.1'
MON_PORTS = (3300, 6789)
MON_ADDRS = '[v2:127.0.0.1:3300,v1:127.0.0.1:6789]'
CINDER_CAPS = ['mon', 'profile rbd', 'osd', 'profile rbd pool=%s' % POOL,
               'mgr', 'profile rbd pool=%s' % POOL]
# stop order: the OSD first, while the mon is still there (else it waits 5 s for it)
DAEMONS = (('osd', '0', '/usr/bin/ceph-osd'), ('mgr', 'x', '/usr/bin/ceph-mgr'),
           ('mon', 'a', '/usr/bin/ceph-mon'))

CONF = """\
# written by tools/storage-stack: a single-node test cluster on 127.0.0.1 only
[global]
fsid = {fsid}
mon_initial_members = a
mon_host = {mon_addrs}
public_network = 127.0.0.0/8
cluster_network = 127.0.0.0/8
ms_bind_ipv4 = true
ms_bind_ipv6 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
keyring = {ceph}/$cluster.$name.keyring
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
run_dir = {run}
crash_dir = {ceph}/crash
# daemons only (clients such as QEMU and Cinder keep no log file and no admin socket)
[mon]
mon_data = {ceph}/mon/$cluster-$id
# the mon's own keyring: the global one above would make it disable cephx
keyring = $mon_data/keyring
mon_allow_pool_delete = true
# this disk may be less than 30 % free: no MON_DISK_LOW warning for a test cluster
mon_data_avail_warn = 1
mon_cluster_log_file = default={logs}/ceph.$channel.log cluster={logs}/ceph.log
log_file = {logs}/ceph-$name.log
pid_file = {run}/ceph-$name.pid
admin_socket = {run}/ceph-$name.asok
[mgr]
mgr_data = {ceph}/mgr/$cluster-$id
keyring = $mgr_data/keyring
log_file = {logs}/ceph-$name.log
pid_file = {run}/ceph-$name.pid
admin_socket = {run}/ceph-$name.asok
[osd]
osd_data = {ceph}/osd/$cluster-$id
keyring = $osd_data/keyring
osd_objectstore = memstore
memstore_device_bytes = 4294967296
# memstore writes its objects to osd_data only in a clean umount, which the (default)
# fast shutdown on SIGTERM skips: without this, a restarted OSD has no PGs and all I/O hangs
osd_fast_shutdown = false
log_file = {logs}/ceph-$name.log
pid_file = {run}/ceph-$name.pid
admin_socket = {run}/ceph-$name.asok
"""


def _argv(paths, binary, ident):
    return [binary, '--cluster', 'ceph', '--conf', paths.ceph_conf, '-i', ident]


def _marker(paths, binary, ident):
    return (binary, '--conf %s -i %s ' % (paths.ceph_conf, ident))


def _pidfile(paths, kind, ident):
    return os.path.join(paths.run, 'ceph-%s.%s.pid' % (kind, ident))


def pids(paths):
    return {'ceph-%s.%s' % (k, i): daemons.running(_pidfile(paths, k, i), _marker(paths, b, i))
            for k, i, b in DAEMONS}


def _clean_mark(paths):
    """Present only while the OSD is stopped after a clean SIGTERM: memstore keeps its
    objects in memory and saves them to osd_data only when it shuts down cleanly."""
    return os.path.join(paths.ceph, 'osd', 'ceph-0.stopped-cleanly')


def _start(paths, kind, ident, binary):
    pidfile = _pidfile(paths, kind, ident)
    pid = daemons.running(pidfile, _marker(paths, binary, ident))
    if not pid:
        if kind == 'osd' and os.path.exists(_clean_mark(paths)):
            os.unlink(_clean_mark(paths))   # from now on a crash loses the objects again
        pid = daemons.start(_argv(paths, binary, ident), pidfile, _marker(paths, binary, ident),
                            os.path.join(paths.logs, 'ceph-%s.%s.stdout' % (kind, ident)),
                            daemonizes=True, timeout=60)
    return pid


def connect(paths, name='admin', timeout=5):
    import rados
    keyring = paths.admin_keyring if name == 'admin' else paths.cinder_keyring
    cluster = rados.Rados(conffile=paths.ceph_conf, rados_id=name,
                          conf={'keyring': keyring, 'rados_osd_op_timeout': str(timeout),
                                'rados_mon_op_timeout': str(timeout)})
    cluster.connect(timeout=timeout)
    return cluster


def mon(cluster, prefix, inbuf=b'', fmt='json', **args):
    """A mon command; its JSON answer (or its text, for fmt=None: e.g. a keyring)."""
    cmd = dict(args, prefix=prefix)
    if fmt:
        cmd['format'] = fmt
    ret, out, errs = cluster.mon_command(json.dumps(cmd), inbuf, timeout=30)
    if ret != 0:
        raise Failure('ceph %s: %s (%d)' % (prefix, errs, ret))
    text = out.decode()
    try:
        return json.loads(text) if fmt else text
    except ValueError:
        return text


def _key_of(keyring_text):
    for line in keyring_text.splitlines():
        if line.strip().startswith('key = '):
            return line.split('=', 1)[1].strip()
    raise Failure('no key in keyring')


def cinder_key(paths):
    with open(paths.cinder_keyring) as f:
        return _key_of(f.read())


def _authtool(*args):
    run(['ceph-authtool'] + list(args))


def _check_ports_free():
    for port in MON_PORTS:
        if port_open(port):
            raise Failure('127.0.0.1:%d is in use by a Ceph this stack did not start; stop it '
                          'first' % port)


def create(paths):
    """A new cluster from nothing (whatever was under Paths.ceph is removed)."""
    stop(paths)
    _check_ports_free()
    for d in ('mon', 'osd', 'mgr', 'crash'):
        shutil.rmtree(os.path.join(paths.ceph, d), ignore_errors=True)
    for name in os.listdir(paths.ceph):
        os.unlink(os.path.join(paths.ceph, name))
    for d in ('mon/ceph-a', 'osd/ceph-0', 'mgr/ceph-x', 'crash'):
        os.makedirs(os.path.join(paths.ceph, d), mode=0o700)
    fsid = str(uuid.uuid4())
    write_text(paths.ceph_conf, CONF.format(fsid=fsid, mon_addrs=MON_ADDRS, ceph=paths.ceph,
                                            run=paths.run, logs=paths.logs))
    mon_kr = os.path.join(paths.ceph, 'mon.keyring')
    monmap = os.path.join(paths.ceph, 'monmap')
    _authtool('--create-keyring', mon_kr, '--gen-key', '-n', 'mon.', '--cap', 'mon', 'allow *')
    _authtool('--create-keyring', paths.admin_keyring, '--gen-key', '-n', 'client.admin',
              '--cap', 'mon', 'allow *', '--cap', 'osd', 'allow *', '--cap', 'mds', 'allow *',
              '--cap', 'mgr', 'allow *')
    _authtool(mon_kr, '--import-keyring', paths.admin_keyring)
    run(['monmaptool', '--create', '--addv', 'a', MON_ADDRS, '--fsid', fsid, monmap])
    run(_argv(paths, '/usr/bin/ceph-mon', 'a') + ['--mkfs', '--monmap', monmap,
                                                  '--keyring', mon_kr])
    os.unlink(mon_kr)
    os.unlink(monmap)
    _start(paths, 'mon', 'a', '/usr/bin/ceph-mon')
    say('  ceph-mon a started (%s)' % MON_ADDRS)
    cluster = wait_until(lambda: _try_connect(paths), 30, 'ceph-mon to answer')
    try:
        keyring = mon(cluster, 'auth get-or-create', fmt=None, entity='mgr.x',
                      caps=['mon', 'allow profile mgr', 'osd', 'allow *', 'mds', 'allow *'])
        write_private(os.path.join(paths.ceph, 'mgr/ceph-x/keyring'), keyring)
        _start(paths, 'mgr', 'x', '/usr/bin/ceph-mgr')
        say('  ceph-mgr x started')
        osd_uuid = str(uuid.uuid4())
        secret = run(['ceph-authtool', '--gen-print-key']).stdout.strip()
        osd_id = mon(cluster, 'osd new', json.dumps({'cephx_secret': secret}).encode(),
                     uuid=osd_uuid).get('osdid')
        if osd_id != 0:
            raise Failure('the new OSD got id %r, expected 0' % osd_id)
        _authtool('--create-keyring', os.path.join(paths.ceph, 'osd/ceph-0/keyring'),
                  '--name', 'osd.0', '--add-key', secret)
        run(_argv(paths, '/usr/bin/ceph-osd', '0') + ['--mkfs', '--osd-uuid', osd_uuid])
        _start(paths, 'osd', '0', '/usr/bin/ceph-osd')
        say('  ceph-osd 0 started (memstore)')
        wait_until(lambda: mon(cluster, 'osd stat').get('num_up_osds') == 1, 60, 'osd.0 up')
        say('  osd.0 is up')
        mon(cluster, 'osd pool create', pool=POOL, pg_num=8, pgp_num=8)
        import rbd
        with cluster.open_ioctx(POOL) as ioctx:
            rbd.RBD().pool_init(ioctx, False)
        keyring = mon(cluster, 'auth get-or-create', fmt=None, entity='client.' + USER,
                      caps=CINDER_CAPS)
        write_private(paths.cinder_keyring, keyring)
        say('  pool %s (rbd) and client.%s (profile rbd, pool %s only) created'
            % (POOL, USER, POOL))
    finally:
        cluster.shutdown()


def _try_connect(paths):
    try:
        return connect(paths, timeout=3)
    except Exception:  # noqa: BLE001 - rados.TimedOut / ObjectNotFound while it starts
        return None


def _io_probe(cluster):
    """Write and read back one object in the pool (5 s at most: rados_osd_op_timeout)."""
    try:
        with cluster.open_ioctx(POOL) as ioctx:
            payload = uuid.uuid4().bytes
            ioctx.write_full('attachworker-health', payload)
            ok = ioctx.read('attachworker-health') == payload
            ioctx.remove_object('attachworker-health')
        return ok, 'pool %s: an object written and read back' % POOL
    except Exception as exc:  # noqa: BLE001 - rados.TimedOut and friends
        return False, 'pool %s: I/O failed: %s' % (POOL, exc)


def exists(paths):
    need = [paths.ceph_conf, paths.admin_keyring, paths.cinder_keyring,
            os.path.join(paths.ceph, 'mon/ceph-a/store.db'),
            os.path.join(paths.ceph, 'osd/ceph-0/keyring')]
    return all(os.path.exists(p) for p in need)


class DataLost(Failure):
    pass


def start_existing(paths):
    """Start whichever of our daemons is not running, on the data already there.
    Raises DataLost when the OSD was not stopped cleanly (its data is gone: an OSD started
    on it would hold no PGs, and every request would queue forever while health says OK)."""
    running = pids(paths)
    if not running['ceph-osd.0'] and not os.path.exists(_clean_mark(paths)):
        raise DataLost('osd.0 was not stopped cleanly, so its memstore objects are gone')
    if not running['ceph-mon.a']:
        _check_ports_free()
    for kind, ident, binary in reversed(DAEMONS):   # mon, mgr, osd
        if not running['ceph-%s.%s' % (kind, ident)]:
            _start(paths, kind, ident, binary)
            say('  ceph-%s %s started on the existing data' % (kind, ident))


def health(paths, timeout=5):
    """{check: (ok, text)} for status/up; connects only when our mon runs."""
    out = {}
    running = pids(paths)
    for name, pid in running.items():
        out[name] = (bool(pid), 'pid %s' % pid if pid else 'not running')
    if not running['ceph-mon.a']:
        return out
    try:
        cluster = connect(paths, timeout=timeout)
    except Exception as exc:  # noqa: BLE001
        out['ceph-cluster'] = (False, 'cannot connect as client.admin: %s' % exc)
        return out
    try:
        h = mon(cluster, 'health')
        checks = ', '.join(sorted(h.get('checks', {})))
        out['ceph-health'] = (h['status'] == 'HEALTH_OK', h['status'] + (' ' + checks
                                                                         if checks else ''))
        pgs = mon(cluster, 'status').get('pgmap', {})
        states = {s['state_name']: s['count'] for s in pgs.get('pgs_by_state', [])}
        out['ceph-pgs'] = (bool(states) and set(states) == {'active+clean'},
                           '%d PGs: %s' % (pgs.get('num_pgs', 0), ', '.join(
                               '%d %s' % (n, st) for st, n in sorted(states.items()))))
        pools = [p['poolname'] for p in mon(cluster, 'osd lspools')]
        out['ceph-pool'] = _io_probe(cluster) if POOL in pools else (False, 'pool %s MISSING'
                                                                     % POOL)
        try:
            got = mon(cluster, 'auth get', entity='client.' + USER)[0]
            same = got['key'] == cinder_key(paths)
            out['ceph-client'] = (same, 'client.%s %s (%s)' % (
                USER, 'key matches its keyring' if same else 'key differs from its keyring',
                '; '.join('%s %s' % kv for kv in sorted(got['caps'].items()))))
        except (Failure, OSError, KeyError, IndexError) as exc:
            out['ceph-client'] = (False, 'client.%s: %s' % (USER, exc))
    finally:
        cluster.shutdown()
    return out


def stop(paths, log=say):
    """Our daemons, OSD first; then any stray of ours whose PID file is gone."""
    for kind, ident, binary in DAEMONS:
        marker = _marker(paths, binary, ident)
        done = daemons.stop_pidfile(_pidfile(paths, kind, ident), marker,
                                    'ceph-%s.%s' % (kind, ident), timeout=20, log=log)
        if kind == 'osd' and done == 'stopped':
            write_text(_clean_mark(paths), 'stopped by SIGTERM: memstore saved its objects\n')
        daemons.sweep(marker, 'ceph-%s.%s' % (kind, ident), log=log)

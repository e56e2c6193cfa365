"""A local 3-node RabbitMQ cluster on loopback (issue 12): tools/rabbit-cluster and the
failover tests (tests/cluster) both drive it through this module.

Three nodes of the machine's rabbitmq-server (Debian's 3.10), ``awc1..3@localhost``,
beside the machine's broker and never touching it:

* AMQP on 127.0.0.1:5682/5683/5684, Erlang distribution on 25682/25683/25684, and an
  epmd of our own on 127.0.0.1:4370 (the machine's broker has its epmd on 4369);
* everything under ``$ATTACHWORKER_CLUSTER_HOME`` (/var/tmp/attachworker-cluster): the
  Erlang cookie (its ``HOME``), each node's rabbitmq.conf, env file, data, logs and PID
  files; nothing is read from /etc/rabbitmq;
* light: each VM has 2 schedulers that never busy-wait, a 1 GiB memory watermark, a
  50 MB disk limit and no plugins.

The nodes themselves (kill -9, SIGSTOP/SIGCONT, graceful stop, rabbitmqctl) are
rabbit_cluster_node.Node, re-exported here; this module adds epmd and the cluster's
up/down/status.
"""
import os
import shutil
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemons  # noqa: E402  (tools/lib is not a package)
from rabbit_cluster_node import AMQP_PORT  # noqa: E402,F401
from rabbit_cluster_node import EPMD_PORT  # noqa: E402,F401
from rabbit_cluster_node import HOME  # noqa: E402,F401
from rabbit_cluster_node import MARKER  # noqa: E402,F401
from rabbit_cluster_node import NAMES  # noqa: E402,F401
from rabbit_cluster_node import NODES  # noqa: E402,F401
from rabbit_cluster_node import PASSWORD  # noqa: E402,F401
from rabbit_cluster_node import READY_TIMEOUT  # noqa: E402,F401
from rabbit_cluster_node import SBIN  # noqa: E402,F401
from rabbit_cluster_node import USER  # noqa: E402,F401
from rabbit_cluster_node import ClusterError  # noqa: E402,F401
from rabbit_cluster_node import Node  # noqa: E402,F401
from rabbit_cluster_node import amqp_ports  # noqa: E402,F401
from rabbit_cluster_node import base_env  # noqa: E402,F401
from rabbit_cluster_node import node  # noqa: E402,F401
from rabbit_cluster_node import port_open  # noqa: E402,F401
from rabbit_cluster_node import quiet  # noqa: E402,F401
from rabbit_cluster_node import say  # noqa: E402,F401
from rabbit_cluster_node import transport_url  # noqa: E402,F401

EPMD_ARGV0 = 'attachworker-cluster-epmd'


# --- epmd -------------------------------------------------------------------------------
def _epmd_pidfile():
    return os.path.join(HOME, 'run', 'epmd.pid')


def _epmd_marker():
    return (EPMD_ARGV0, HOME)


def ensure_epmd(log=say):
    if daemons.running(_epmd_pidfile(), _epmd_marker()):
        return
    epmd = shutil.which('epmd') or '/usr/bin/epmd'
    pid = daemons.start(['bash', '-c', 'exec -a "$0" %s -port %d -address 127.0.0.1'
                         % (epmd, EPMD_PORT), '%s %s' % (EPMD_ARGV0, HOME)],
                        _epmd_pidfile(), _epmd_marker(),
                        os.path.join(HOME, 'log', 'epmd.out'), env=base_env(), settle=0)
    deadline = time.monotonic() + 10
    while not port_open(EPMD_PORT):
        if time.monotonic() > deadline:
            raise ClusterError('epmd does not listen on 127.0.0.1:%d' % EPMD_PORT)
        time.sleep(0.05)
    log('epmd on 127.0.0.1:%d (pid %d)' % (EPMD_PORT, pid))


# --- the cluster -------------------------------------------------------------------------
def states():
    return {n.name: n.state() for n in NODES}


def is_up():
    return all(s == 'running' for s in states().values())


def start(nodes, timeout=READY_TIMEOUT, log=quiet):
    """Start nodes (on their data) at once, and wait until each accepts AMQP.

    At once matters: a node that was not the last to stop waits for the others."""
    ensure_epmd(log)
    t0 = time.monotonic()
    for n in nodes:
        n.launch()
    for n in nodes:
        n.wait_ready(timeout)
    log('%s accepting AMQP after %.1f s' % (', '.join(n.name for n in nodes),
                                             time.monotonic() - t0))


def _fresh():
    for sub in ('data', 'log', 'run'):
        shutil.rmtree(os.path.join(HOME, sub), ignore_errors=True)
    os.makedirs(os.path.join(HOME, 'run'), exist_ok=True)
    os.makedirs(os.path.join(HOME, 'log'), exist_ok=True)
    cookie = os.path.join(HOME, '.erlang.cookie')
    if not os.path.exists(cookie):
        with open(os.open(cookie, os.O_WRONLY | os.O_CREAT, 0o400), 'w') as f:
            f.write(os.urandom(16).hex().upper())
    for name, text in (('rabbitmq-env.conf', '# attachworker cluster: nothing here\n'),
                       ('enabled_plugins', '[].\n')):
        with open(os.path.join(HOME, name), 'w') as f:
            f.write(text)


def members(via=None, timeout=60.0):
    """(running nodes, all cluster members) as one node sees them."""
    via = via or next(n for n in NODES if n.state() == 'running')
    status = via.ctl_json('cluster_status', timeout=timeout)
    return sorted(status.get('running_nodes', [])), sorted(status.get('disk_nodes', []))


def up(log=say):
    """Idempotent: start what is not running; a fresh cluster when nothing is."""
    t0 = time.monotonic()
    os.makedirs(HOME, exist_ok=True)
    current = states()
    for n in NODES:
        if current[n.name] == 'paused':
            log('%s was paused: resuming it' % n.name)
            n.resume()
    if all(s == 'running' for s in states().values()):
        log('already up: %s' % transport_url())
        return False
    if all(s == 'stopped' for s in current.values()):
        sweep(log)
        _fresh()
        ensure_epmd(log)
        first, rest = NODES[0], NODES[1:]
        log('starting %s (AMQP 127.0.0.1:%d, distribution %d)'
            % (first.name, first.amqp_port, first.dist_port))
        start([first], log=log)
        log('starting %s; they join %s' % (', '.join(n.name for n in rest), first.name))
        start(rest, log=log)
    else:
        missing = [n for n in NODES if current[n.name] == 'stopped']
        log('starting %s on their data' % ', '.join(n.name for n in missing))
        start(missing, log=log)
        for n in NODES:
            n.wait_ready()
    running, disk = members()
    if running != sorted(n.name for n in NODES):
        raise ClusterError('the nodes did not form one cluster: running %s, members %s'
                           % (running, disk))
    log('up in %.1f s: 3 running nodes %s' % (time.monotonic() - t0, ', '.join(running)))
    log('transport_url = %s' % transport_url())
    return True


def sweep(log=say):
    """Stop every process of ours left without a PID file (never anybody else's)."""
    daemons.sweep((MARKER, HOME + '/'), 'RabbitMQ node', 30, log)
    daemons.sweep(_epmd_marker(), 'epmd', 10, log)


def down(log=say, wipe=True):
    """Stop every node (at once) and our epmd; the data is wiped unless wipe=False."""
    t0 = time.monotonic()
    pids = [p for p in (n.script_pid() for n in NODES) if p]
    vms = [p for p in (n.vm_pid() for n in NODES) if p]
    for p in vms:
        os.kill(p, signal.SIGCONT)
    stopped = daemons.stop(pids + vms, (MARKER, HOME + '/'), 'RabbitMQ nodes', 60, log)
    daemons.stop_pidfile(_epmd_pidfile(), _epmd_marker(), 'epmd', 10, log)
    sweep(log)
    if wipe:
        shutil.rmtree(os.path.join(HOME, 'data'), ignore_errors=True)
    for n in NODES:
        try:
            os.unlink(n.pidfile)
        except FileNotFoundError:
            pass
    log('down in %.1f s%s' % (time.monotonic() - t0, '' if stopped else ' (was not running)'))
    return bool(stopped)

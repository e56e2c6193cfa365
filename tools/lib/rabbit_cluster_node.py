"""The nodes of the local RabbitMQ cluster (tools/lib/rabbit_cluster.py): where each
lives, how it is started, killed, paused and asked things. Import rabbit_cluster, which
re-exports all of this.

Processes are ours by a marker in their command line (``-attachworker_cluster HOME/NODE``
is passed to each node's ``erl``), through tools/lib/daemons.py. A node is killed with
SIGKILL on its VM (``kill``), paused (``pause``/``resume``), stopped gracefully by
SIGTERM to its ``rabbitmq-server`` script (``stop``) and started again on its data
(``start``), where it rejoins the cluster by itself.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemons  # noqa: E402  (tools/lib is not a package)

HOME = os.environ.get('ATTACHWORKER_CLUSTER_HOME', '/var/tmp/attachworker-cluster')
NAMES = ('awc1', 'awc2', 'awc3')
AMQP_PORT = 5682          # awc1; awc2 and awc3 take the next two
EPMD_PORT = 4370
SBIN = os.environ.get('ATTACHWORKER_RABBITMQ_SBIN', '/usr/lib/rabbitmq/bin')
USER = PASSWORD = 'guest'  # RabbitMQ's default user: allowed from loopback only
MARKER = '-attachworker_cluster'
READY_TIMEOUT = 120.0

CONF = """\
listeners.tcp.1 = 127.0.0.1:{amqp}
loopback_users.guest = true
log.console = false
log.file.level = info
vm_memory_high_watermark.absolute = 1GiB
disk_free_limit.absolute = 50MB
cluster_partition_handling = pause_minority
collect_statistics_interval = 30000
raft.wal_max_size_bytes = 67108864
cluster_formation.peer_discovery_backend = classic_config
cluster_formation.classic_config.nodes.1 = awc1@localhost
"""
ERL_ARGS = ('-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false '
            '+S 2:2 +sbwt none +sbwtdcpu none +sbwtdio none')


def say(msg):
    print('[rabbit-cluster] %s' % msg, flush=True)


def quiet(_msg):
    pass


class ClusterError(RuntimeError):
    pass


def port_open(port, host='127.0.0.1', timeout=0.5):
    try:
        with socket.create_connection((host, port), timeout):
            return True
    except OSError:
        return False


def base_env():
    """What every Erlang process of the cluster (nodes and CLI) runs with."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('RABBITMQ_', 'ERL_'))}
    env.update(HOME=HOME, ERL_EPMD_PORT=str(EPMD_PORT), ERL_EPMD_ADDRESS='127.0.0.1',
               RABBITMQ_CONF_ENV_FILE=os.path.join(HOME, 'rabbitmq-env.conf'),
               RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(HOME, 'enabled_plugins'),
               LC_ALL='C.UTF-8')
    return env


class Node:
    def __init__(self, index):
        self.short = NAMES[index]
        self.name = '%s@localhost' % self.short
        self.amqp_port = AMQP_PORT + index
        self.dist_port = AMQP_PORT + 20000 + index
        self.dir = os.path.join(HOME, self.short)
        self.pidfile = os.path.join(HOME, 'run', self.short + '.pid')
        self.log = os.path.join(HOME, 'log', self.short + '.out')
        self.marker = (MARKER, self.dir + ' ')

    def __repr__(self):
        return self.name

    def env(self):
        env = base_env()
        env.update(RABBITMQ_NODENAME=self.name, RABBITMQ_NODE_IP_ADDRESS='127.0.0.1',
                   RABBITMQ_NODE_PORT=str(self.amqp_port),
                   RABBITMQ_DIST_PORT=str(self.dist_port),
                   RABBITMQ_CONFIG_FILE=os.path.join(self.dir, 'rabbitmq.conf'),
                   RABBITMQ_ADVANCED_CONFIG_FILE=os.path.join(self.dir, 'advanced.config'),
                   RABBITMQ_MNESIA_BASE=os.path.join(HOME, 'data'),
                   RABBITMQ_LOG_BASE=os.path.join(HOME, 'log'),
                   RABBITMQ_PID_FILE=os.path.join(HOME, 'run', self.short + '.vm.pid'),
                   RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=ERL_ARGS)
        return env

    # --- processes ---------------------------------------------------------------------
    def script_pid(self):
        """The node's rabbitmq-server script, if running and ours."""
        return daemons.running(self.pidfile, self.marker)

    def vm_pid(self):
        """The node's Erlang VM (beam.smp), if running and ours."""
        pid = self.script_pid()
        for p in daemons.descendants(pid) if pid else ():
            argv = daemons.cmdline(p) or ['']
            if 'beam' in os.path.basename(argv[0]) and daemons.is_ours(p, self.marker):
                return p
        return None

    def state(self):
        """'running', 'paused' (SIGSTOP), 'starting' (VM up, AMQP closed), 'stopped'."""
        pid = self.vm_pid()
        if not pid:
            return 'stopped'
        try:
            with open('/proc/%d/stat' % pid) as f:
                if f.read().rsplit(')', 1)[1].split()[0] == 'T':
                    return 'paused'
        except OSError:
            return 'stopped'
        return 'running' if port_open(self.amqp_port) else 'starting'

    def write_config(self):
        os.makedirs(self.dir, exist_ok=True)
        with open(os.path.join(self.dir, 'rabbitmq.conf'), 'w') as f:
            f.write(CONF.format(amqp=self.amqp_port))

    def launch(self):
        """Start the node on its data (no wait); a running one is left alone."""
        if self.script_pid():
            return
        self.write_config()
        try:
            daemons.start([os.path.join(SBIN, 'rabbitmq-server'), MARKER, self.dir],
                          self.pidfile, self.marker, self.log, env=self.env(), cwd=HOME,
                          settle=0)
        except daemons.StartError as exc:
            raise ClusterError('%s did not start: %s' % (self.name, exc)) from exc

    def wait_ready(self, timeout=READY_TIMEOUT):
        """Until AMQP accepts; raises with the log's tail when the node died."""
        deadline = time.monotonic() + timeout
        while not port_open(self.amqp_port):
            if not self.vm_pid() and not self.script_pid():
                raise ClusterError('%s exited while starting; see %s\n%s' % (
                    self.name, self.log, daemons._tail(self.log)))
            if time.monotonic() > deadline:
                raise ClusterError('%s does not accept AMQP on 127.0.0.1:%d after %.0f s; '
                                   'see %s' % (self.name, self.amqp_port, timeout, self.log))
            time.sleep(0.1)

    def kill(self, sig=signal.SIGKILL, wait=10.0):
        """kill -9 the VM (a crash); returns once its script has exited too."""
        pid, script = self.vm_pid(), self.script_pid()
        if pid:
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while script and daemons.is_ours(script, self.marker):
            if time.monotonic() > deadline:
                daemons.stop([script], self.marker, self.name, 5, quiet)
                break
            time.sleep(0.02)
        return pid

    def pause(self):
        os.kill(self._vm(), signal.SIGSTOP)

    def resume(self):
        os.kill(self._vm(), signal.SIGCONT)

    def _vm(self):
        pid = self.vm_pid()
        if not pid:
            raise ClusterError('%s is not running' % self.name)
        return pid

    def stop(self, timeout=60.0, log=quiet):
        """A graceful stop (SIGTERM to rabbitmq-server: it stops the VM cleanly)."""
        pid = self.vm_pid()
        if pid:
            os.kill(pid, signal.SIGCONT)  # a paused VM cannot stop
        return daemons.stop_pidfile(self.pidfile, self.marker, self.name, timeout, log)

    def ctl(self, *args, timeout=60.0, check=True, tool='rabbitmqctl'):
        """``rabbitmqctl -n NODE ARGS`` (or rabbitmq-queues...) as this cluster's CLI."""
        try:
            proc = subprocess.run([os.path.join(SBIN, tool), '-n', self.name, *args],
                                  env=base_env(), cwd=HOME if os.path.isdir(HOME) else None,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ClusterError('%s -n %s %s: no answer within %.0f s (a node paused?)'
                               % (tool, self.name, ' '.join(args), timeout)) from None
        if check and proc.returncode:
            raise ClusterError('%s -n %s %s: exit %d: %s' % (
                tool, self.name, ' '.join(args), proc.returncode,
                (proc.stderr or proc.stdout).strip()[-800:]))
        return proc.stdout

    def ctl_json(self, *args, timeout=60.0):
        out = self.ctl(*args, '--formatter', 'json', '--quiet', timeout=timeout)
        return json.loads(out or 'null')


NODES = [Node(i) for i in range(len(NAMES))]


def node(name):
    """A node by short name, full name or index."""
    for n in NODES:
        if name in (n.short, n.name) or name == NODES.index(n):
            return n
    raise KeyError(name)


def transport_url(vhost='', user=USER, password=PASSWORD):
    return 'rabbit://%s/%s' % (','.join('%s:%s@127.0.0.1:%d' % (user, password, n.amqp_port)
                                        for n in NODES), vhost)


def amqp_ports():
    return {n.amqp_port: n for n in NODES}

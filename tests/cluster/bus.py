"""The failover tests' side of the bus: cluster handles, the controller, a publisher, the
audit consumer, and the judge that counts what every cast got.

Node control (kill -9, SIGSTOP/SIGCONT, restart, the quorum queue leader, which node a
connection is on) is tools/lib/rabbit_cluster.py, shared with tools/rabbit-cluster.
"""
import collections
import datetime
import importlib.util
import json
import pathlib
import re
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

import kombu
from oslo_config import cfg

from attachworker import config
from attachworker import context as aw_context
from attachworker import outcome
from attachworker import rpc
from attachworker import rpcapi
from attachworker.audit import migration
from attachworker.audit import store
from tests.harness import terminate

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent
sys.path.insert(0, str(ROOT / 'tools' / 'lib'))
_spec = importlib.util.spec_from_file_location('rabbit_cluster',
                                               ROOT / 'tools' / 'lib' / 'rabbit_cluster.py')
rc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rc)

#: What every process of these tests sets in [oslo_messaging_rabbit] (README, "Running
#: on a RabbitMQ cluster"); heartbeat_timeout_threshold is short so that a SIGSTOP test
#: stays short. rabbit_quorum_delivery_limit and kombu_reconnect_delay are the
#: project's defaults. Not use_queue_manager: it names nothing the worker or the audit
#: consumer declares, and concurrent attachworker-cast processes would share one reply
#: queue (test_cli.py).
RABBIT_OPTIONS = {
    'rabbit_quorum_queue': 'true',
    'rabbit_transient_quorum_queue': 'true',
    'rabbit_stream_fanout': 'true',
    'amqp_durable_queues': 'true',  # attachworker.outcome's exchange must match
    'heartbeat_timeout_threshold': '10',
}
TERMINAL = ('.end', '.error')
PROJECT = uuid.uuid4().hex


def caller():
    return aw_context.RequestContext(auth_token='tok-%s' % uuid.uuid4().hex, user_id='u1',
                                     project_id=PROJECT, roles=['member'])


def wait_until(predicate, timeout, what, interval=0.1):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError('timed out waiting for %s' % what)
        time.sleep(interval)


# --- the cluster, as the tests see it ---------------------------------------------------
def _props(triples):
    return {k: (_props(v) if t == 'table' else v) for k, t, v in triples or ()}


def connections(vhost, process, pid):
    """[(node, connection name, consumers)] of the process's AMQP connections."""
    via = next(n for n in rc.NODES if n.state() == 'running')
    conns = via.ctl_json('list_connections', '-p', vhost, 'name', 'port',
                         'client_properties')
    consumers = collections.Counter()
    for ch in via.ctl_json('list_channels', '-p', vhost, 'name', 'consumer_count'):
        consumers[ch['name'].rsplit(' (', 1)[0]] += ch['consumer_count']
    prefix = '%s:%d:' % (process, pid)
    return [(rc.amqp_ports()[c['port']], c['name'], consumers[c['name']]) for c in conns
            if str(_props(c['client_properties']).get('connection_name', '')
                   ).startswith(prefix)]


def consumer_node(vhost, process, pid, timeout=30):
    """The node holding the process's consuming connection (the RPC listener's)."""
    found = []

    def look():
        found[:] = [n for n, _, count in connections(vhost, process, pid) if count]
        return found
    wait_until(look, timeout, 'a consuming connection of %s %d' % (process, pid), 0.5)
    return found[0]


def queue_info(vhost, name):
    via = next(n for n in rc.NODES if n.state() == 'running')
    for q in via.ctl_json('list_queues', '-p', vhost, 'name', 'type', 'leader', 'members',
                          'online', 'messages', 'consumers', 'arguments'):
        if q['name'] == name:
            q['arguments'] = {k: v for k, _, v in q['arguments']}
            return q
    return None


def leader(vhost, queue):
    """The node of the queue's leader; None while there is none (an election)."""
    info = queue_info(vhost, queue)
    try:
        return rc.node(info['leader']) if info else None
    except KeyError:  # '' or an unknown node while it is being elected
        return None


def move_leader(vhost, queue, away_from):
    """Quorum leadership off a node (3.10's CLI has no command for it: the function
    that maintenance mode uses, through rabbitmqctl eval); the new leader."""
    to = next(n for n in rc.NODES if n is not away_from and n.state() == 'running')
    to.ctl('eval', '{ok, Q} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"%s">>, queue, '
                   '<<"%s">>)), rabbit_quorum_queue:transfer_leadership(Q, \'%s\').'
           % (vhost, queue, to.name))
    wait_until(lambda: leader(vhost, queue) not in (None, away_from), 30,
               'a leader of %s other than %s' % (queue, away_from.name), 0.3)
    return leader(vhost, queue)


def lead_nothing(vhost, node):
    """Move the leadership of every quorum queue of the vhost off node; how many."""
    via = next(n for n in rc.NODES if n is not node and n.state() == 'running')
    led = [q['name'] for q in via.ctl_json('list_queues', '-p', vhost, 'name', 'type',
                                           'leader')
           if q['type'] == 'quorum' and q['leader'] == node.name]
    for name in led:
        move_leader(vhost, name, node)
    return len(led)


# --- the controller: casts and an outcome watcher that survives node failures -----------
class QuorumWatcher(outcome.OutcomeWatcher):
    """attachworker.outcome's watcher on a quorum queue: a named classic queue lives on
    one node and cannot be declared again while that node is down."""

    def __enter__(self):
        bindings = [kombu.binding(self._exchange, routing_key='%s.%s' % (self._topic, p))
                    for p in outcome.PRIORITIES]
        self._queue = kombu.Queue(self._queue_name, bindings=bindings, durable=True,
                                  auto_delete=False, exclusive=False,
                                  queue_arguments={'x-queue-type': 'quorum'})
        while True:
            try:
                self._connect()
                return self
            except (OSError, kombu.exceptions.OperationalError):
                time.sleep(0.5)

    def events(self, request_id=None, budget=0.5):
        """As OutcomeWatcher.events, but returns after ``budget`` s even while
        notifications keep coming (that one drains until a pause)."""
        deadline = time.monotonic() + budget
        while time.monotonic() < deadline and self._drain(0.05):
            pass
        return [n for n in self._received
                if request_id is None or outcome.request_id_of(n) == request_id]


class Controller:
    def __init__(self, worker_config):
        self.conf = cfg.CONF
        config.parse_args(self.conf, ['test', '--config-file', str(worker_config)], 'test')
        self.transport = rpc.get_rpc_transport(self.conf)
        self.api = rpcapi.ComputeAPI(self.conf, self.transport)
        self.watcher = QuorumWatcher(self.conf, queue='watch-%s' % uuid.uuid4().hex[:8])
        self.watcher.__enter__()

    def terminal(self):
        """{request_id: {message_id: (event_type, completion time)}} of .end/.error."""
        seen = collections.defaultdict(dict)
        for note in self.watcher.events():
            if note['event_type'].endswith(TERMINAL):
                stamp = datetime.datetime.fromisoformat(note['timestamp']).timestamp()
                seen[outcome.request_id_of(note)][note['message_id']] = (
                    note['event_type'], stamp)
        return seen

    def close(self):
        try:
            self.watcher.__exit__(None, None, None)
        finally:
            self.transport.cleanup()
            self.conf.reset()


class Publisher(threading.Thread):
    """Casts one attach per volume at ``rate`` per second (0: as fast as it can); a cast
    that returned was confirmed by the broker (oslo.messaging publishes with confirms)."""

    def __init__(self, ctl, host, volumes, rate=0.0):
        super().__init__(name='publisher', daemon=True)
        self.ctl, self.host, self.volumes, self.rate = ctl, host, volumes, rate
        self.sent = []      # (request_id, volume_id, called, returned)
        self.failed = []    # (request_id, volume_id, exception)
        self.hold = threading.Event()
        self.hold.set()

    def run(self):
        t0 = time.monotonic()
        for n, volume_id in enumerate(self.volumes):
            self.hold.wait()
            if self.rate:
                time.sleep(max(0.0, t0 + n / self.rate - time.monotonic()))
            ctxt, called = caller(), time.time()
            try:
                self.ctl.api.attach_volume(ctxt, self.host, {'uuid': str(uuid.uuid4())},
                                           volume_id, '/dev/vdb')
            except Exception as exc:  # noqa: BLE001 - a cast that raised was not sent
                self.failed.append((ctxt.request_id, volume_id, exc))
                continue
            self.sent.append((ctxt.request_id, volume_id, called, time.time()))


# --- the audit consumer ------------------------------------------------------------------
class Audit:
    """``attachworker-audit serve`` on the cluster, with a SQLite store."""

    def __init__(self, directory, worker):
        directory.mkdir(parents=True, exist_ok=True)
        self.db = directory / 'audit.sqlite'
        self.log = directory / 'audit.log'
        engine = store.create_engine('sqlite:///%s' % self.db)
        migration.upgrade(engine)
        engine.dispose()
        sections = {'DEFAULT': {'transport_url': worker.transport_url,
                                'control_exchange': worker.exchange,
                                'state_path': directory / 'state', 'log_file': self.log},
                    'oslo_messaging_rabbit': dict(RABBIT_OPTIONS),
                    'oslo_concurrency': {'lock_path': directory / 'locks'},
                    'audit': {'connection': 'sqlite:///%s' % self.db,
                              'pool': 'audit-%s' % uuid.uuid4().hex[:8]}}
        self.config = directory / 'audit.conf'
        self.config.write_text(''.join(
            '[%s]\n%s\n' % (g, ''.join('%s = %s\n' % kv for kv in v.items()))
            for g, v in sections.items()))
        self.proc = None

    def start(self, timeout=60):
        self.proc = subprocess.Popen([str(BIN / 'attachworker-audit'), '--config-file',
                                      str(self.config), 'serve'],
                                     stdout=open(self.log.with_suffix('.out'), 'w'),
                                     stderr=subprocess.STDOUT)
        wait_until(lambda: self.log.exists() and 'Audit consumer listening'
                   in self.log.read_text() or self.proc.poll() is not None, timeout,
                   'the audit consumer')
        assert self.proc.poll() is None, self.logs()[-3000:]
        return self

    def stop(self):
        return terminate(self.proc)

    def logs(self):
        return ''.join(p.read_text() for p in (self.log, self.log.with_suffix('.out'))
                       if p.exists())

    def rows(self):
        """({request_id: outcome}, {request_id: [terminal event types]})"""
        with sqlite3.connect('file:%s?mode=ro' % self.db, uri=True, timeout=30) as db:
            ops = dict(db.execute('SELECT request_id, outcome FROM operations'))
            events = collections.defaultdict(list)
            for rid, kind in db.execute('SELECT request_id, event_type FROM events'):
                if kind.endswith(TERMINAL):
                    events[rid].append(kind)
        return ops, events


# --- the judge -----------------------------------------------------------------------------
class Judge:
    """Waits for the outcomes of what was sent, then says what every cast got."""

    def __init__(self, ctl, cinder, worker, audit, publisher):
        self.ctl, self.cinder, self.worker = ctl, cinder, worker
        self.audit, self.publisher = audit, publisher

    def settle(self, timeout=240, quiet=40):
        """Until every confirmed cast has an outcome and the audit store has it, or
        nothing new came for ``quiet`` s (a lost cast never gets one). After every
        node was down, oslo.messaging's back-off (rabbit_retry_interval 1 s, +2 s per
        try, up to 30 s) can keep a connection away for 15 s after the nodes are back."""
        deadline, last, since = time.monotonic() + timeout, None, time.monotonic()
        while time.monotonic() < deadline:
            seen = self.ctl.terminal()
            ops, _ = self.audit.rows()
            sent = [r for r, *_ in self.publisher.sent]
            if not self.publisher.is_alive() and all(r in seen and r in ops for r in sent):
                break
            state = (len(seen), len(ops))
            if state != last:
                last, since = state, time.monotonic()
            elif time.monotonic() - since > quiet and not self.publisher.is_alive():
                break
            time.sleep(0.5)
        time.sleep(1)  # a late duplicate would show up now
        return self.ctl.terminal()

    def verdict(self, seen):
        sent = {r: v for r, v, *_ in self.publisher.sent}
        per_cast = collections.Counter(len(seen.get(r, ())) for r in sent)
        ops, events = self.audit.rows()
        again = collections.Counter(re.findall(r'Cast (\w+) was delivered again',
                                               self.worker.logs()))
        stuck = {v: self.cinder.volume(v)['status'] for v in sent.values()
                 if self.cinder.volume(v)['status'] not in ('available', 'in-use')}
        disagree = []
        for rid, volume_id in sent.items():
            kinds = {e for e, _ in seen.get(rid, {}).values()}
            status = self.cinder.volume(volume_id)['status']
            want = 'instance.volume_attach.%s' % ('end' if status == 'in-use' else 'error')
            if kinds and kinds != {want}:
                disagree.append((rid, kinds, status))
        return {
            'sent': len(sent), 'failed_to_send': len(self.publisher.failed),
            'lost': per_cast.get(0, 0),
            'duplicated': sum(c for n, c in per_cast.items() if n > 1),
            'attached': sum(self.cinder.volume(v)['status'] == 'in-use'
                            for v in sent.values()),
            'stuck': stuck, 'disagree': disagree,
            'audit_missing': sum(r not in ops for r in sent),
            'audit_terminal_not_once': sum(len(events.get(r, ())) != 1 for r in sent),
            'redelivered_known': sum(again.values()),
            'redelivered_max': max(again.values(), default=0),
            'reconnects': self.worker.logs().count('Reconnected to AMQP server'),
        }

    @staticmethod
    def throughput(seen, fault, end_of_fault=None):
        """Completions per second before the fault, during (fault to recovery) and after;
        recovery = the first completion after the longest stall that follows the fault."""
        times = sorted(t for events in seen.values() for _, t in events.values())
        if not times:
            return {}
        after = [t for t in times if t >= fault] or [fault]
        stalls = [(b - a, b) for a, b in zip([fault] + after, after, strict=False)]
        stall, recovered = max(stalls)
        if end_of_fault is not None:
            recovered = max(recovered, min((t for t in times if t >= end_of_fault),
                                           default=recovered))

        def rate(lo, hi):
            n = sum(lo <= t < hi for t in times)
            return n / (hi - lo) if hi > lo else float('nan')
        return {'before': rate(times[0], fault), 'during': rate(fault, recovered),
                'after': rate(recovered, times[-1] + 1e-6), 'recovery': recovered - fault,
                'stall': stall, 'completions': len(times)}


def report(title, verdict, tput, extra=''):
    print('%s: %d casts confirmed (%d raised), %d lost, %d with more than one outcome, '
          '%d attached, %d stuck; audit store: %d missing, %d without exactly one outcome; '
          'worker: %d reconnects, %d redeliveries of journalled casts dropped (at most %d '
          'of one cast)%s'
          % (title, verdict['sent'], verdict['failed_to_send'], verdict['lost'],
             verdict['duplicated'], verdict['attached'], len(verdict['stuck']),
             verdict['audit_missing'], verdict['audit_terminal_not_once'],
             verdict['reconnects'], verdict['redelivered_known'],
             verdict['redelivered_max'], extra))
    if tput:
        print('  recovered %.1f s after the fault (longest stall without an outcome %.1f s); '
              'throughput (outcomes/s) before %.1f, during %.1f, after %.1f'
              % (tput['recovery'], tput['stall'], tput['before'], tput['during'],
                 tput['after']))


def assert_clean(verdict):
    problems = {k: verdict[k] for k in ('lost', 'duplicated', 'audit_missing',
                                        'audit_terminal_not_once') if verdict[k]}
    problems.update({k: verdict[k] for k in ('stuck', 'disagree') if verdict[k]})
    assert not problems, json.dumps(problems, default=str)[:3000]

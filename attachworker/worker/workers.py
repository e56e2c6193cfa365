"""The main process of ``[worker] workers = N``: N children, each cast to one of them.

The main process recovers what the last run left (once, before anything is
consumed), then starts N children (attachworker.worker.child), each a fresh
interpreter (``python -m attachworker.cmd.compute``, the same command line): nothing
of the main process (a broker connection, the journal's SQLite handles, a lock held
by a thread) is inherited through a fork. Each child has a socketpair to the main
process, and the main process is the host queue's only consumer:

* ``route`` (on the consumer's poll thread, in delivery order) hands each cast to
  the child of its instance (attachworker.worker.router.slot_of), through its
  attachworker.worker.slot.Slot (a queue and a sender thread: a child slow to read
  never holds the consumer);
* a child says ``('ack', token)`` once the cast is journalled, and the main process
  acknowledges it to the broker (attachworker.worker.delivery's deferred ack): as
  with one process, a cast is acknowledged exactly when it is durable;
* RPC calls are not routed: the main process answers them itself
  (``reserve_block_device_name`` takes the instance lock, shared by every process).

A child that exits while the main process is not stopping (a crash, kill -9, or a
SIGTERM of its own, which drains it) is replaced: the main process first waits for
it, recovers its unfinished operations (journalled, so recovery resolves each once:
the dead child's owner lock is free), then starts a new child and hands it, in their
order, the casts the dead one had not journalled, then what arrived meanwhile. A
slot never has two children, so an instance's casts never overtake each other. (The
casts held by the child, journalled or not, were never acknowledged to the broker:
should the main process die too, the broker has them.)

What stays in the main process: start-up and periodic recovery (SerialRecovery:
one round at a time), the outbox flush (SettledJournal), device reservation expiry,
journal pruning, and ``[metrics] port`` (the children do not serve one: their
per-cast metrics come to the main process's endpoint, attachworker.worker.child_metrics;
the journal gauges cover the whole host).

SIGTERM (attachworker.worker.service): the main process stops consuming and sends
each child ``stop`` (a second signal, or the graceful timeout: ``abort``), through the
pipe rather than as a signal, so that a child which got the same signal directly
(systemd's control group, a terminal's process group) sees one stop, not two. A
child stopping hands back what it had not started; the main process leaves those
unacknowledged, for the broker to deliver again after the exit. If the main process
dies, each child sees its pipe close and stops the same way.
"""
import itertools
import sys
import threading
import time
from typing import Any
from typing import Callable
from typing import Optional

from oslo_log import log as logging

from attachworker.worker import router
from attachworker.worker import slot
from attachworker.worker.journal import Journal

LOG = logging.getLogger(__name__)

#: Seconds an unsent outbox row is left to the child that queued it before the main
#: process's flush publishes it (the child publishes it a few ms after queueing it;
#: this only catches a child that died or a bus that was down).
SETTLE = 15.0


class SettledJournal(Journal):
    """The main process's journal. Its outbox flush skips, while children live, the
    rows they queued in the last SETTLE seconds: a child publishes its own rows, and
    a second copy (same event id) would only be noise for the audit trail."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.children_alive: Callable[[], bool] = lambda: False

    def unsent(self) -> Any:
        cutoff = time.time() - SETTLE if self.children_alive() else None
        for row in super().unsent():
            if cutoff is None or row['created_at'] <= cutoff:
                yield row


class SerialRecovery:
    """Recovery runs in the main process only, one round at a time: at start-up, every
    ``reconcile_interval``, and after a child died."""

    def __init__(self, recovery: Any) -> None:
        self._recovery = recovery
        self._lock = threading.Lock()

    def run(self, stop: Optional[threading.Event] = None) -> dict:
        with self._lock:
            return self._recovery.run(stop)


class Supervisor:
    def __init__(self, count: int, argv: list, recover: Callable[[Any], Any],
                 command: Optional[list] = None) -> None:
        self.count = count
        #: what starts a child: this module's command line, ATTACHWORKER_WORKER_CHILD set
        self.command = (command or [sys.executable, '-m', 'attachworker.cmd.compute']
                        ) + list(argv[1:])
        self._recover = recover
        self._tokens = itertools.count(1)
        self._spread = itertools.count()
        self.stopping = threading.Event()
        self.failed = threading.Event()
        self.stop_event = threading.Event()
        self.slots = [slot.Slot(self, index) for index in range(count)]

    def start(self, stop: threading.Event) -> bool:
        """Start every child; True once all are ready, False if ``stop`` came first or
        a child could not start (logged)."""
        self.stop_event = stop
        for each in self.slots:
            each.spawn()
        while not all(each.started.is_set() for each in self.slots):
            if stop.is_set() or self.failed.is_set():
                return False
            time.sleep(0.05)
        return True

    def route(self, incoming: Any) -> None:
        """A cast, from the consumer's poll thread: queued for its child, never blocks."""
        message = dict(incoming.message)  # the driver's dict holds its kombu message
        key = router.route_key(message)
        index = router.slot_of(key, self.count) if key else next(self._spread) % self.count
        self.slots[index].put(router.Routed(
            next(self._tokens), dict(incoming.ctxt), message,
            getattr(incoming, 'unique_id', None), getattr(incoming, 'deferred_ack', None),
            getattr(incoming, 'deferred_requeue', None)))

    def alive(self) -> bool:
        return any(each.alive() for each in self.slots)

    def stop(self) -> None:
        self.stopping.set()
        for each in self.slots:
            each.control('stop')

    def abort(self) -> None:
        for each in self.slots:
            each.control('abort')

    def wait(self, timeout: Optional[float] = None) -> bool:
        """True once no slot has a child, nor will have one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for each in self.slots:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not each.wait_final(left):
                return False
        return True

    def kill(self) -> None:
        for each in self.slots:
            each.kill()

    def recover(self) -> None:
        try:
            self._recover(self.stop_event)
        except Exception:  # noqa: BLE001 - the periodic round retries it
            LOG.exception('Recovery after a worker process died failed')

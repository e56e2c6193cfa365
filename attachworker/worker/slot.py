"""One child process of the main process (``[worker] workers = N``) and its casts.

A Slot has at most one child at a time (a successor starts only after its
predecessor exited and was recovered), the queue of casts for the instances that
hash to it, a sender thread (casts in arrival order, through a socketpair: the
consumer's poll thread never waits for a child) and, per child, a reader thread
(``ready``, ``draining``, ``ack`` once a cast is journalled: the broker is then told).

When the child exits, the casts it held and had not journalled go back to the head of
the queue, in their order, for its successor. One of them goes alone, and nothing
after it until it is journalled: a cast that kills its child before being journalled
is then the only one handed back again, and after MAX_HANDBACKS it goes back to the
broker, which counts its deliveries, as with one process.
"""
import collections
import multiprocessing.connection
import os
import pickle
import socket
import subprocess
import threading
import time
from typing import Any
from typing import Optional

from oslo_log import log as logging

from attachworker.worker import child_metrics
from attachworker.worker import router

LOG = logging.getLogger(__name__)

#: ``<index> <count> <fd>`` in a child's environment; absent in the main process.
CHILD_ENV = 'ATTACHWORKER_WORKER_CHILD'
#: A child that lived less than this is restarted after a back-off (doubling from
#: RESTART_DELAY up to RESTART_MAX), so that one failing at start does not spin.
STABLE_AFTER = 10.0
RESTART_DELAY = 1.0
RESTART_MAX = 30.0
#: Children that may die holding a cast not yet journalled before it goes back to the
#: broker instead of to the next child: a cast that kills every process it reaches
#: is then counted by the broker (``rpc.QUORUM_DELIVERY_LIMIT``), as with one process,
#: and no longer stops the casts of its slot (it loses its place in their order).
MAX_HANDBACKS = 3


def child_of(environ: Any) -> Optional[tuple]:
    """(index, count, fd) when this process is a child; the variable is removed."""
    value = environ.pop(CHILD_ENV, None)
    if not value:
        return None
    index, count, fd = (int(part) for part in value.split())
    return index, count, fd


def connection(fd: int) -> multiprocessing.connection.Connection:
    return multiprocessing.connection.Connection(fd)


class Slot:
    """One child at a time, and the casts of the instances that hash to it."""

    def __init__(self, supervisor: Any, index: int) -> None:
        self._sup = supervisor
        self.index = index
        self.name = 'worker %d/%d' % (index + 1, supervisor.count)
        self._cond = threading.Condition()
        self._queue: collections.deque = collections.deque()  # to send, in order
        self._sent: dict = {}  # token -> Routed: sent to the child, not journalled yet
        self._control: collections.deque = collections.deque()
        self._conn: Any = None
        self._conn_lock = threading.Lock()  # a send and the close of the connection
        self.proc: Optional[subprocess.Popen] = None
        self._serving = False  # the child said ready, and not draining
        self._probing = False  # a cast handed back by a dead child is in flight alone
        self._final = False  # no child, and none will be started
        self._quick_deaths = 0
        self.started = threading.Event()  # a child of this slot was ready once
        threading.Thread(target=self._send_loop, name='%s-send' % self.name,
                         daemon=True).start()

    # --- the child -----------------------------------------------------------------------
    def spawn(self) -> None:
        parent_end, child_end = socket.socketpair()
        env = dict(os.environ)
        env[CHILD_ENV] = '%d %d %d' % (self.index, self._sup.count, child_end.fileno())
        try:
            proc = subprocess.Popen(self._sup.command, env=env,
                                    pass_fds=(child_end.fileno(),))
        except OSError as exc:
            parent_end.close()
            LOG.error('Could not start %s: %s', self.name, exc)
            self._sup.failed.set()
            with self._cond:
                self._final = True
                self._cond.notify_all()
            return
        finally:
            child_end.close()
        conn = connection(parent_end.detach())
        with self._cond:
            self.proc, self._conn, self._serving = proc, conn, False
        LOG.info('Started %s (pid %d)', self.name, proc.pid)
        threading.Thread(target=self._read, args=(proc, conn, time.monotonic()),
                         name='%s-read' % self.name, daemon=True).start()

    def alive(self) -> bool:
        proc = self.proc
        return proc is not None and proc.poll() is None

    def kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            LOG.warning('Killing %s (pid %d): it did not stop in time', self.name, proc.pid)
            proc.kill()

    def wait_final(self, timeout: Optional[float]) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._final, timeout)

    def _read(self, proc: subprocess.Popen, conn: Any, since: float) -> None:
        try:
            while True:
                message = conn.recv()
                if message[0] == 'ack':
                    with self._cond:
                        item = self._sent.pop(message[1], None)
                        if item is not None and item.handbacks:
                            self._probing = False
                            self._cond.notify_all()
                    if item is not None and item.ack is not None:
                        item.ack()
                elif message[0] == 'metrics':
                    child_metrics.COLLECTOR.update(self.index, message[1])
                elif message[0] in ('ready', 'draining'):
                    with self._cond:
                        self._serving = message[0] == 'ready'
                        self._cond.notify_all()
                    if message[0] == 'ready':
                        self.started.set()
        except (EOFError, OSError):
            pass
        code = proc.wait()
        child_metrics.COLLECTOR.retire(self.index)  # its counts stay, its gauges go
        with self._conn_lock:
            conn.close()
        with self._cond:
            back, requeue = [], []
            for item in self._sent.values():
                item.handbacks += 1
                (back if item.handbacks < MAX_HANDBACKS or item.requeue is None
                 else requeue).append(item)
            self._sent.clear()
            self._queue.extendleft(reversed(back))
            self._conn, self._serving, self._probing = None, False, False
            waiting = len(self._queue)
        for item in requeue:
            LOG.error('%s: cast %s was in %d worker processes that died before it was '
                      'journalled: given back to the broker', self.name, item.unique_id,
                      item.handbacks)
            item.requeue()
        self._exited(proc, code, len(back), waiting, time.monotonic() - since)

    def _exited(self, proc: subprocess.Popen, code: int, back: int, waiting: int,
                lived: float) -> None:
        how = 'exit status %d' % code if code >= 0 else 'signal %d' % -code
        if self._sup.stopping.is_set() or not self.started.is_set():
            (LOG.info if code == 0 else LOG.warning)('%s (pid %d) ended (%s)', self.name,
                                                     proc.pid, how)
            if not self.started.is_set() and not self._sup.stopping.is_set():
                LOG.error('%s could not start: attachworker-compute stops', self.name)
                self._sup.failed.set()
            with self._cond:
                self._final = True
                self._cond.notify_all()
            return
        LOG.warning('%(name)s (pid %(pid)d) ended (%(how)s) after %(lived).1f s: '
                    'recovering its unfinished operations, then a new process takes '
                    '%(waiting)d cast(s), %(back)d of them handed to the old one and not '
                    'journalled', {'name': self.name, 'pid': proc.pid, 'how': how,
                                   'lived': lived, 'waiting': waiting, 'back': back})
        self._sup.recover()
        self._quick_deaths = self._quick_deaths + 1 if lived < STABLE_AFTER else 0
        delay = (min(RESTART_DELAY * 2 ** (self._quick_deaths - 1), RESTART_MAX)
                 if self._quick_deaths else 0)
        if self._sup.stopping.wait(delay):
            with self._cond:
                self._final = True
                self._cond.notify_all()
            return
        self.spawn()

    # --- what goes to the child ----------------------------------------------------------
    def put(self, item: router.Routed) -> None:
        with self._cond:
            self._queue.append(item)
            self._cond.notify_all()

    def control(self, what: str) -> None:
        with self._cond:
            self._control.append(what)
            self._cond.notify_all()

    def _next(self) -> tuple:
        """(connection, message) to send: controls first; casts to a serving child, in
        order. A cast a dead child held goes alone (nothing else in flight, nothing
        after it until it is journalled): a cast that kills its child is handed back
        alone, and the others are not blamed for it."""
        with self._cond:
            while True:
                conn = self._conn
                if conn is not None and self._control:
                    return conn, ('control', self._control.popleft())
                if (conn is not None and self._serving and self._queue
                        and not self._probing and not self._sup.stopping.is_set()
                        and not (self._queue[0].handbacks and self._sent)):
                    item = self._queue.popleft()
                    self._sent[item.token] = item
                    self._probing = bool(item.handbacks)
                    return conn, item.wire()
                self._cond.wait()

    def _send_loop(self) -> None:
        while True:
            conn, message = self._next()
            try:
                data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
            except Exception:  # noqa: BLE001 - never from JSON; the thread must go on
                LOG.exception('%s: cannot hand a cast over; it stays unacknowledged, '
                              'for the broker to deliver again', self.name)
                if message[0] == 'cast':
                    with self._cond:
                        self._sent.pop(message[1], None)
                        self._probing = False
                        self._cond.notify_all()
                continue
            try:
                with self._conn_lock:
                    conn.send_bytes(data)
            except (OSError, ValueError):  # the child is gone (ValueError: closed)
                with self._cond:
                    if self._conn is conn:
                        self._serving = False  # its reader hands the casts back

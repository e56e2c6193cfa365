"""One worker process of ``[worker] workers = N``: the casts the main process hands it.

The child never consumes from the broker and never recovers what another process left
(the main process does, once at start-up and for a child that died); every
``[worker] reconcile_interval`` it retries its own failed undos, as a single worker
does. It reads casts from its pipe
(attachworker.worker.router.Routed), runs each through the same Dispatcher and
manager as a single worker does, one instance's casts at a time and in arrival order
(router.KeyedFifo), and tells the main process ``('ack', token)`` once a cast is
journalled: the main process then acknowledges it to the broker.

Stopping is the single worker's (attachworker.worker.service): a first SIGTERM or
SIGINT, or ``stop`` from the main process, finishes what runs within
``[worker] graceful_shutdown_timeout``; then, or at a second one (``abort``), what
still runs is undone. A cast received and not started is left alone, never
journalled nor acknowledged: the main process hands it to this child's successor, or
the broker delivers it again. The pipe closing (the main process died, kill -9
included) stops the child the same way: nothing of it goes on consuming.
"""
import concurrent.futures
import signal
import threading
import time
from typing import Any

from oslo_log import log as logging

from attachworker.worker import child_metrics
from attachworker.worker import router
from attachworker.worker import service

LOG = logging.getLogger(__name__)


class ChildService(service.WorkerService):
    def __init__(self, conn: Any, dispatcher: Any, manager: Any, outbox: Any, conf: Any,
                 index: int, count: int, recovery: Any = None) -> None:
        super().__init__(None, manager, recovery, outbox, conf)
        self._conn = conn
        self._dispatcher = dispatcher
        self._send_lock = threading.Lock()
        self.name = 'attachworker-compute worker %d/%d' % (index + 1, count)
        self._fifo: Any = None
        #: changes whenever something that counts ran: casts, this process's recovery
        #: (+= from several threads may lose a step; a change is all that is read)
        self._activity = 0

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        threads = self._conf.executor_thread_pool_size
        pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix='cast')
        self._fifo = router.KeyedFifo(pool)
        threading.Thread(target=self._read, name='pipe', daemon=True).start()
        threading.Thread(target=self._periodic, name='housekeeping', daemon=True).start()
        done = threading.Event()
        reporter = threading.Thread(target=self._report_metrics, args=(done,),
                                    name='metrics', daemon=True)
        reporter.start()
        self._send(('ready',))
        LOG.info('%s: ready, %d threads (start-up recovery is the main process\'s)',
                 self.name, threads)
        while not self._stop.wait(1.0):
            pass
        self._send(('draining',))
        LOG.info('%s: stopping; %d cast(s) in hand, those not started are handed back',
                 self.name, self._fifo.pending)
        timer = threading.Timer(self._timeout, self._timed_out)
        timer.daemon = True
        timer.start()
        while not self._fifo.wait_idle(1.0):
            pass
        timer.cancel()
        pool.shutdown(wait=False)
        self._manager.retry_unjournalled()
        self.close_journal()
        done.set()
        reporter.join(5)   # no snapshot of before may overtake the last one
        self._send(('metrics', child_metrics.snapshot()))  # the last counts
        LOG.info('%s: stopped', self.name)
        return 0

    # --- the pipe ------------------------------------------------------------------------
    def _read(self) -> None:
        try:
            while True:
                message = self._conn.recv()
                if message[0] == 'cast':
                    self._take(*message[1:])
                elif message[0] == 'control':
                    self._control(message[1])
        except (EOFError, OSError):
            pass
        except Exception:  # noqa: BLE001 - a pipe it cannot read: as good as gone
            LOG.exception('%s: cannot read from the main process', self.name)
        if not self._stop.is_set():
            LOG.warning('%s: the main process is gone: finishing what runs, then '
                        'exiting', self.name)
            self._stop.set()

    def _control(self, what: str) -> None:
        """The main process forwards its signals: ``stop`` (its first), ``abort``."""
        if what == 'stop' and self._signals == 0:
            LOG.info('%s: the main process is stopping', self.name)
            self._on_signal(signal.SIGTERM, None)
        elif what == 'abort' and self._signals < 2:
            LOG.info('%s: the main process is aborting', self.name)
            self._signals = max(self._signals, 1)
            self._stop.set()
            self._on_signal(signal.SIGTERM, None)

    def _take(self, token: int, ctxt: dict, message: dict, unique_id: Any) -> None:
        if self._stop.is_set():
            return  # handed back: never acknowledged
        self._fifo.submit(router.route_key(message), self._run_cast, token, ctxt,
                          message, unique_id)

    def _run_cast(self, token: int, ctxt: dict, message: dict, unique_id: Any) -> None:
        if self._stop.is_set():
            return  # not started: handed back, never journalled nor acknowledged
        incoming = router.RoutedIncoming(ctxt, message, unique_id,
                                         lambda: self._send(('ack', token)))
        self._activity += 1
        try:
            self._dispatcher.dispatch(incoming)
        finally:
            self._activity += 1   # after its counts: the next snapshot holds them

    def _send(self, message: tuple) -> None:
        try:
            with self._send_lock:
                self._conn.send(message)
        except OSError:
            pass  # the main process is gone: the broker delivers the cast again

    def _report_metrics(self, done: threading.Event) -> None:
        """Its per-cast metrics, to the main process that serves them (child_metrics):
        only after something ran (a snapshot of every series is not free)."""
        sent = None
        while not done.wait(child_metrics.SNAPSHOT_INTERVAL):
            seen = self._activity
            if seen != sent:
                self._send(('metrics', child_metrics.snapshot()))
                sent = seen

    def exit_now(self, code: int) -> None:
        # what the undos counted, if the main process takes it within a second: this
        # is the last resort, and nothing may hold it (a full pipe, a held send lock)
        last = threading.Thread(target=lambda: self._send(
            ('metrics', child_metrics.snapshot())), name='last-metrics', daemon=True)
        last.start()
        last.join(1.0)
        super().exit_now(code)

    # --- housekeeping: only what is this process's own -----------------------------------
    def _periodic(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(service.FLUSH_INTERVAL):
            try:
                self._manager.retry_unjournalled()
            except Exception:  # noqa: BLE001 - retried at the next round
                LOG.exception('Journalling outcomes published earlier failed')
            if (self._recovery is not None and self._reconcile_interval > 0
                    and time.monotonic() - last >= self._reconcile_interval):
                last = time.monotonic()
                try:
                    self._recovery.run(self._stop, own_only=True)
                except Exception:  # noqa: BLE001 - retried at the next round
                    LOG.exception('Retrying this process\'s failed undos failed')
                self._activity += 1

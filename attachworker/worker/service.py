"""Running the compute worker: recover, serve, reconcile, drain.

Start-up: recover what a dead worker left unfinished and publish queued
notifications, *then* consume. While serving: every ``[worker] reconcile_interval``
seconds the same recovery, and the outbox is flushed every few seconds.

First SIGTERM (or SIGINT): stop consuming; in-flight casts go on for at most
``[worker] graceful_shutdown_timeout`` seconds. Then, or at a second signal, every
operation still running stops at its next step, is undone and publishes its
``.error``. If a call still hangs after ``ABORT_GRACE`` more seconds the process
exits anyway: the journal records every step before it runs, so the next start
recovers what was cut. The exit status is 0.

With ``[worker] workers = N > 1`` this is the main process, and ``workers`` its
children (attachworker.worker.workers.Supervisor): they start after start-up
recovery, before the server consumes; the signals above are forwarded to them
(``stop``, then ``abort``), the drain waits for every child to exit before the
server's connection is closed, and the last resort kills children still running.
"""
import logging as logging_std
import os
import signal
import threading
import time
from typing import Any

from oslo_log import log as logging

from attachworker import rpc

LOG = logging.getLogger(__name__)

#: Seconds granted after the abort for undos to run before exiting regardless.
ABORT_GRACE = 30
FLUSH_INTERVAL = 5
#: Seconds that start-up recovery gets to finish its operation after SIGTERM.
STARTUP_STOP_GRACE = 5
#: With children: extra seconds the main process grants them after ABORT_GRACE (they
#: run the same timers, started a moment later) before it kills them and exits.
CHILDREN_GRACE = 10


class WorkerService:
    def __init__(self, server: Any, manager: Any, recovery: Any, outbox: Any,
                 conf: Any, workers: Any = None) -> None:
        self._server = server
        self._workers = workers
        self._manager = manager
        self._recovery = recovery
        self._outbox = outbox
        self._timeout = conf.worker.graceful_shutdown_timeout
        self._reconcile_interval = conf.worker.reconcile_interval
        self._retention = conf.worker.journal_retention_days * 86400
        self._conf = conf
        self._stop = threading.Event()
        self._signals = 0

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals += 1
        if self._signals == 1:
            LOG.info('Caught %s: stopping, in-flight operations get %d s to finish',
                     signal.Signals(signum).name, self._timeout)
            self._stop.set()
        else:
            LOG.warning('Caught %s again: undoing what is still running',
                        signal.Signals(signum).name)
            self._abort()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        if not self._start_up():
            self.close_journal()
            LOG.info('attachworker-compute stopped during start-up recovery')
            return 0
        if self._workers is not None and not self._workers.start(self._stop):
            self._stop_workers()
            self.close_journal()
            LOG.info('attachworker-compute stopped while starting its worker processes')
            return 0 if self._stop.is_set() else 1
        if not rpc.start_server(self._server, self._stop, self._conf, 'attachworker-compute'):
            self._stop_workers()
            self.exit_now(0)  # the thread still trying to connect would hold the exit
        LOG.info('attachworker-compute ready')
        threading.Thread(target=self._periodic, name='reconcile', daemon=True).start()
        while not self._stop.wait(1.0):
            pass
        self._server.stop()
        if self._workers is not None:
            self._workers.stop()
        timer = threading.Timer(self._timeout, self._timed_out)
        timer.daemon = True
        timer.start()
        waiter = threading.Thread(target=self._drain, name='drain', daemon=True)
        waiter.start()
        while waiter.is_alive():
            waiter.join(1.0)
        timer.cancel()
        self._manager.retry_unjournalled()
        self._outbox.flush()
        self.close_journal()
        LOG.info('attachworker-compute stopped')
        return 0

    def _drain(self) -> None:
        if self._workers is not None:
            self._workers.wait()  # their acks still go out: the listener is only stopped
        self._server.wait()

    def _stop_workers(self) -> None:
        if self._workers is not None:
            self._workers.stop()
            if not self._workers.wait(self._timeout + ABORT_GRACE + CHILDREN_GRACE):
                self._workers.kill()

    def _start_up(self) -> bool:
        """Recovery before consuming, in a thread so that SIGTERM is heard at once.

        False when a signal came first: recovery stops after the operation it is
        at (or is left behind if a call hangs: its claim dies with this process,
        and the next start takes the operation up again).
        """
        recovering = threading.Thread(target=self.housekeeping, args=(True,),
                                      name='start-up-recovery', daemon=True)
        recovering.start()
        while recovering.is_alive():
            recovering.join(0.2)
            if self._stop.is_set():
                recovering.join(STARTUP_STOP_GRACE)
                return False
        return not self._stop.is_set()

    def housekeeping(self, recover: bool) -> None:
        """Recovery (when asked), queued notifications, journal pruning; never raises."""
        try:
            self._manager.expire_reservations()
        except Exception:  # noqa: BLE001 - recovery and the outbox must still run
            LOG.exception('Expiring device reservations failed; retried next round')
        try:
            self._manager.retry_unjournalled()
            if recover:
                self._recovery.run(self._stop)
            self._outbox.flush()
            if recover:
                self._outbox.journal.prune(time.time() - self._retention)
        except Exception:  # noqa: BLE001 - retried at the next round
            LOG.exception('Housekeeping failed; it runs again at the next interval')

    def _periodic(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(FLUSH_INTERVAL):
            due = (self._reconcile_interval > 0
                   and time.monotonic() - last >= self._reconcile_interval)
            self.housekeeping(recover=due)
            if due:
                last = time.monotonic()

    def _timed_out(self) -> None:
        LOG.warning('graceful_shutdown_timeout (%d s) ran out: undoing what is still '
                    'running', self._timeout)
        self._abort()

    def _abort(self) -> None:
        self._manager.abort.set()
        if self._workers is not None:
            self._workers.abort()
        killer = threading.Timer(ABORT_GRACE + (CHILDREN_GRACE if self._workers else 0),
                                 self._exit_now)
        killer.daemon = True
        killer.start()

    def _exit_now(self) -> None:
        LOG.error('Operations still hang %d s after the abort: exiting; the next start '
                  'recovers them from the journal', ABORT_GRACE)
        self.exit_now(0)

    def close_journal(self) -> None:
        """Commit the journal's pending writes (those not waited for: a step's start
        that arms nothing, a notification marked sent) and close it."""
        try:
            self._outbox.journal.close()
        except Exception as exc:  # noqa: BLE001 - exiting anyway
            LOG.warning('Could not close the journal cleanly: %s', exc)

    def exit_now(self, code: int) -> None:
        """Exit at once, journal and logs flushed, whatever threads still run."""
        if self._workers is not None:
            self._workers.kill()
        self.close_journal()
        LOG.info('attachworker-compute stopped')
        for handler in logging_std.getLogger().handlers:
            handler.flush()
        os._exit(code)

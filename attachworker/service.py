"""Running the compute worker until SIGTERM, then draining it.

First SIGTERM (or SIGINT): stop consuming; in-flight casts go on, for at most
``[worker] graceful_shutdown_timeout`` seconds. Then, or at a second signal, every
operation still running stops at its next step, is undone and publishes its
``.error``. The process then exits 0.
"""
import signal
import threading
from typing import Any

from oslo_log import log as logging

LOG = logging.getLogger(__name__)


class WorkerService:
    def __init__(self, server: Any, manager: Any, graceful_timeout: int) -> None:
        self._server = server
        self._manager = manager
        self._timeout = graceful_timeout
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
            self._manager.abort.set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self._server.start()
        LOG.info('attachworker-compute ready')
        while not self._stop.wait(1.0):
            pass
        self._server.stop()
        timer = threading.Timer(self._timeout, self._timed_out)
        timer.daemon = True
        timer.start()
        self._server.wait()
        timer.cancel()
        LOG.info('attachworker-compute stopped')
        return 0

    def _timed_out(self) -> None:
        LOG.warning('graceful_shutdown_timeout (%d s) ran out: undoing what is still '
                    'running', self._timeout)
        self._manager.abort.set()

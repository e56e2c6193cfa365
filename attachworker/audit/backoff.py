"""The pause before a held message is stored again, shared by every handler thread.

It doubles on each consecutive failure, up to a maximum, and resets on the first
success: a database outage costs one attempt per handler per pause, not a loop
(and no requeue: see :mod:`.consumer`).
"""
import threading


class Backoff:
    """Doubling wait after consecutive failures, reset by a success."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial, self.maximum = initial, maximum
        self._delay = 0.0
        self._lock = threading.Lock()

    def failed(self) -> float:
        with self._lock:
            self._delay = min(self.maximum, max(self.initial, self._delay * 2))
            return self._delay

    def succeeded(self) -> None:
        self._delay = 0.0

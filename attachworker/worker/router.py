"""Which worker process runs a cast, and in which order (``[worker] workers = N``).

With N worker processes the main process is the host queue's only consumer. It
hands each cast to the child :func:`slot_of` names: a stable hash of the cast's
instance uuid (in its canonical form, as validation writes it), so every cast of an
instance goes to the same child, in the order the queue delivered them. A cast
without a readable instance uuid (validation refuses it, and it gets its
``.error``) goes to any child, round robin.

Inside a child, :class:`KeyedFifo` runs the casts of one instance one at a time, in
arrival order, on the thread pool; casts of different instances run in parallel.
(Threads taking a lock are not FIFO: competing for the instance lock alone keeps
an instance's casts apart, not in order.)

What crosses the pipe is :class:`Routed`: the context as oslo.messaging unpacked
it (the caller's token with it: held in memory, never written anywhere), the
message (method, args, version) and the broker's ``_unique_id``; in the child,
:class:`RoutedIncoming` stands in for oslo.messaging's incoming message, so the
cast runs through the same Dispatcher and manager as with one process.
"""
import collections
import dataclasses
import threading
from typing import Any
from typing import Callable
from typing import Optional
import uuid
import zlib

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

#: Longer than any spelling of a uuid: such a value is not parsed, only refused later.
_UUID_MAX = 64


def route_key(message: Any) -> Optional[str]:
    """The canonical instance uuid of an RPC message, None when it has none."""
    args = message.get('args') if isinstance(message, dict) else None
    instance = args.get('instance') if isinstance(args, dict) else None
    value = instance.get('uuid') if isinstance(instance, dict) else None
    if not isinstance(value, str) or len(value) > _UUID_MAX:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def slot_of(key: str, count: int) -> int:
    """Stable across processes and restarts (Python's ``hash`` of a str is not)."""
    return zlib.crc32(key.encode('ascii')) % count


@dataclasses.dataclass
class Routed:
    """A cast on its way to a child; ``ack`` and ``requeue`` (main process only)
    acknowledge it to the broker, or give it back to it."""

    token: int
    ctxt: dict
    message: dict
    unique_id: Optional[str]
    ack: Optional[Callable[[], None]] = None
    requeue: Optional[Callable[[], None]] = None
    #: children that died holding it, not journalled
    handbacks: int = 0

    def wire(self) -> tuple:
        return ('cast', self.token, self.ctxt, self.message, self.unique_id)


class RoutedIncoming:
    """What attachworker.rpc.Dispatcher needs of an oslo.messaging incoming cast."""

    orig_msg_id = None  # a cast: nobody waits for an answer
    msg_id = None
    client_timeout = None

    def __init__(self, ctxt: dict, message: dict, unique_id: Optional[str],
                 ack: Callable[[], None]) -> None:
        self.ctxt = ctxt
        self.message = message
        self.unique_id = unique_id
        self.deferred_ack = ack  # attachworker.worker.delivery calls it once journalled


class KeyedFifo:
    """Runs callables on ``executor``; those of one key one at a time, in the order
    they were submitted. Key None: no order (each such call is on its own).

    A key's calls take turns with the other keys: after each call, its next one is
    submitted to the executor again, behind what other keys queued meanwhile.
    """

    def __init__(self, executor: Any) -> None:
        self._executor = executor
        self._lock = threading.Condition()
        self._queues: dict = {}
        self._pending = 0

    def submit(self, key: Any, fn: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            self._pending += 1
            if key is None:
                key = object()  # a key nothing else has
            queue = self._queues.get(key)
            if queue is not None:
                queue.append((fn, args))
                return
            self._queues[key] = collections.deque([(fn, args)])
        self._executor.submit(self._run_next, key)

    def _run_next(self, key: Any) -> None:
        with self._lock:
            fn, args = self._queues[key][0]
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - the key's next call must still run
            LOG.exception('A queued call failed')
        finally:
            with self._lock:
                queue = self._queues[key]
                queue.popleft()
                self._pending -= 1
                more = bool(queue)
                if not more:
                    del self._queues[key]
                self._lock.notify_all()
        if more:
            self._executor.submit(self._run_next, key)

    @property
    def pending(self) -> int:
        """Calls submitted and not finished (running or queued)."""
        with self._lock:
            return self._pending

    def wait_idle(self, timeout: Optional[float] = None) -> bool:
        """True once every submitted call has finished (False at ``timeout``)."""
        with self._lock:
            return self._lock.wait_for(lambda: self._pending == 0, timeout)

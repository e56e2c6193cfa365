"""One operation in flight: its identity, the step it is at, and its undo stack.

The pipeline in attachworker.manager runs each step through ``Operation.step`` so
that the step it failed at is known (it becomes ``fault.step``), shutdown can stop
it between two steps, and a step observer (the journal) sees every step before
and after it runs. Undos are pushed right after the step they reverse succeeds and
run in reverse order; a failing undo is logged and does not stop the others.
"""
import threading
import time
from typing import Any
from typing import Callable
from typing import Optional
import uuid

from oslo_log import log as logging

from attachworker import exception

LOG = logging.getLogger(__name__)


class StepObserver:
    """Sees every step of every operation. The default sees nothing."""

    def step_started(self, op: 'Operation', step: str) -> None:
        """Called before ``step`` runs."""

    def step_done(self, op: 'Operation', step: str, result: Any = None) -> None:
        """Called after ``step`` succeeded."""


class Operation:
    """An attach (or detach) being carried out; knows its notification fields."""

    #: Kept in ``fields`` for the journal and recovery, never notified.
    PRIVATE = ('connector',)

    def __init__(self, action: str, request_id: str, host: str,
                 abort: Optional[threading.Event] = None,
                 observer: Optional[StepObserver] = None) -> None:
        self.action = action
        self.id = str(uuid.uuid4())
        self.fields: dict = {'request_id': request_id, 'host': host}
        self.current_step = 'validate'
        self.completed_steps: list = []
        self._undo: list = []
        self._abort = abort or threading.Event()
        self._observer = observer or StepObserver()
        self._started = time.monotonic()

    # --- identity -----------------------------------------------------------------------
    def update(self, **fields: Any) -> None:
        self.fields.update(fields)

    def payload(self, final: bool = False) -> dict:
        """The notification fields (what recovery alone needs stays out)."""
        values = {k: v for k, v in self.fields.items() if k not in self.PRIVATE}
        if final:
            values['duration_ms'] = int((time.monotonic() - self._started) * 1000)
        return values

    # --- steps ---------------------------------------------------------------------------
    def step(self, name: str, fn: Callable[..., Any], *args: Any,
             undo: Optional[tuple] = None, **kwargs: Any) -> Any:
        """Run one pipeline step, unless the worker is stopping.

        ``undo`` is ``(name, fn, *args)``: it is pushed when the step succeeds, and
        also when it fails in a way that leaves open whether the other side did it
        (a timeout, a 5xx, a dropped connection: any failure not marked
        ``expected``). A definite refusal (a 4xx, a volume in the wrong state) did
        nothing, and undoing it could undo someone else's work.
        """
        if self._abort.is_set():
            self.current_step = 'shutdown'
            raise exception.ShuttingDown(reason='stopped before step %s' % name)
        self.current_step = name
        self._observer.step_started(self, name)
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            if undo and not getattr(exc, 'expected', False):
                self.push_undo(*undo)
            raise
        self.completed_steps.append(name)
        self._observer.step_done(self, name, result)
        if undo:
            self.push_undo(*undo)
        return result

    def push_undo(self, name: str, fn: Callable[..., Any], *args: Any) -> None:
        self._undo.append((name, fn, args))

    def commit(self) -> None:
        """The operation is complete: nothing is to be undone any more."""
        self._undo.clear()

    def undo(self) -> list:
        """Run the undo stack, newest first; return the names of undos that failed."""
        failed = []
        while self._undo:
            name, fn, args = self._undo.pop()
            self._observer.step_started(self, name)
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - try every undo, report the rest
                LOG.error('Undo %(undo)s of %(action)s for volume %(volume)s failed: %(exc)s',
                          {'undo': name, 'action': self.action,
                           'volume': self.fields.get('volume_id'), 'exc': exc})
                failed.append(name)
            else:
                self._observer.step_done(self, name)
        return failed

    def fault(self, exc: BaseException, undo_failed: Optional[list] = None) -> dict:
        message = str(exc) or type(exc).__name__
        if undo_failed:
            message += ' (undo failed: %s)' % ', '.join(undo_failed)
        return {'exception': type(exc).__name__, 'message': message,
                'step': self.current_step, 'code': getattr(exc, 'code', None) or 500}

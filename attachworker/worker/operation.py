"""One operation in flight: its identity, the step it is at, and its undo stack.

The pipeline in attachworker.manager runs each step through ``Operation.step`` so
that the step it failed at is known (it becomes ``fault.step``), shutdown can stop
it between two steps, and a step observer (the journal) sees every step before
and after it runs.

The undo of a step is named when the step starts, as a name and its arguments
(attachworker.worker.undo runs it), and the observer journals it with the step's start:
so the undo exists whenever its step may have done something, in this process's
memory and on disk alike. (On disk it may also exist for a step that never ran: its
start was written, then the journal failed to confirm what came before it, as after a
kill right after the start; such an undo finds nothing to do.) A step that fails
with a definite refusal (an ``expected`` error: a 4xx, a volume in the wrong state)
did nothing, and its undo is dropped; any other failure (a timeout, a 5xx, a dropped
connection) keeps it. ``commit`` ends the operation: nothing is to be undone any more.

Observer errors (a journal that cannot be written) before a step stop the
operation before the step runs; during the undos they are logged and every undo
still runs.
"""
import threading
import time
from typing import Any
from typing import Callable
from typing import Optional
import uuid

from oslo_log import log as logging

from attachworker import exception
from attachworker import metrics
from attachworker.worker import undo as undo_rules

LOG = logging.getLogger(__name__)


class StepObserver:
    """Sees every step of every operation. The default sees nothing."""

    def step_started(self, op: 'Operation', step: str, entry: Optional[dict]) -> None:
        """Before ``step`` runs; ``entry`` is the undo it arms, if any."""

    def step_done(self, op: 'Operation', step: str, result: Any = None,
                  entries: tuple = (), commit: bool = False) -> None:
        """After ``step`` succeeded; ``entries``: its undo re-armed with the ids the
        step returned, a resume entry it armed; ``commit``: the operation is
        complete with this step."""

    def step_failed(self, op: 'Operation', step: str, exc: BaseException,
                    dropped: Optional[dict]) -> None:
        """``step`` raised; ``dropped`` is its undo when the failure was definite."""

    def before_undo(self, op: 'Operation') -> None:
        """Before the stack of a failed operation runs: what was recorded of it is on
        disk (a step's end may not have waited: the journal's rule)."""

    def undo_ran(self, op: 'Operation', entry: dict, error: Optional[BaseException]) -> None:
        """An entry of the stack ran (``error`` None when it succeeded)."""


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
        self.version = 0
        self.current_step = 'validate'
        self.stack: list = []
        self._seq = 0
        self._abort = abort or threading.Event()
        self._observer = observer or StepObserver()
        self._started = time.monotonic()
        #: ``(end state, exception or None)`` once its outcome is decided (Outcomes)
        self.ended: Optional[tuple] = None

    # --- identity -----------------------------------------------------------------------
    def update(self, **fields: Any) -> None:
        self.fields.update(fields)
        self.version += 1  # the journal writes the fields again

    def payload(self, final: bool = False) -> dict:
        """The notification fields (what recovery alone needs stays out)."""
        values = {k: v for k, v in self.fields.items() if k not in self.PRIVATE}
        if final:
            values['duration_ms'] = int((time.monotonic() - self._started) * 1000)
        return values

    # --- steps ---------------------------------------------------------------------------
    def _entry(self, step: str, spec: tuple, kind: str) -> dict:
        self._seq += 1
        name, args = spec
        return {'seq': self._seq, 'step': step, 'name': name, 'args': dict(args),
                'kind': kind, 'state': 'armed'}

    def arm(self, step: str, undo: tuple) -> dict:
        """An undo armed with the operation's first record (Journal.begin)."""
        entry = self._entry(step, undo, undo_rules.UNDO)
        self.stack.append(entry)
        return entry

    def step(self, name: str, fn: Callable[..., Any], *args: Any,
             undo: Optional[tuple] = None, finish: Optional[tuple] = None,
             rearm: Optional[Callable[[Any], dict]] = None, resume: Optional[tuple] = None,
             commit: bool = False, **kwargs: Any) -> Any:
        """Run one pipeline step, unless the worker is stopping.

        ``undo`` is ``(undo_name, {arguments})``; ``finish`` the same for an entry
        that finishes the operation instead and supersedes the undos armed before
        it. ``rearm(result)`` gives arguments to update in the undo once the step
        answered (an id it returned). ``resume``: an entry armed once the step
        succeeded, that recovery may run to complete the operation instead of
        undoing it. ``commit``: the operation is complete when this step succeeds,
        atomically with the step's record.
        """
        if self._abort.is_set():
            self.current_step = 'shutdown'
            raise exception.ShuttingDown(reason='stopped before step %s' % name)
        self.current_step = name
        entry = None
        if undo or finish:
            entry = self._entry(name, finish or undo,
                                undo_rules.FINISH if finish else undo_rules.UNDO)
        self._observer.step_started(self, name, entry)  # JournalError: the step never ran
        if entry:
            self.stack.append(entry)
        started = time.monotonic()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            self._timed(name, started)
            dropped = None
            if entry and getattr(exc, 'expected', False):
                entry['state'] = 'dropped'
                dropped = entry
            try:
                self._observer.step_failed(self, name, exc, dropped)
            except exception.JournalError as journal_exc:
                LOG.error('Could not journal the failure of step %s: %s', name, journal_exc)
            raise
        self._timed(name, started)
        changed = []
        if entry and rearm:
            entry['args'].update(rearm(result))
            changed.append(entry)
        if resume:
            changed.append(self._entry(name, resume, undo_rules.RESUME))
            self.stack.append(changed[-1])
        self._observer.step_done(self, name, result, tuple(changed), commit)
        if commit:
            self.commit()
        return result

    def _timed(self, step: str, started: float) -> None:
        metrics.STEP_SECONDS.labels(self.action, step).observe(time.monotonic() - started)

    def commit(self) -> None:
        """The operation is complete: nothing is to be undone any more."""
        for entry in self.stack:
            if entry['state'] == 'armed':
                entry['state'] = 'committed'

    def undo(self, compensator: Any) -> tuple:
        """Run the stack (attachworker.worker.undo.run_stack); (failed names, finished)."""
        try:
            self._observer.before_undo(self)
        except exception.JournalError as journal_exc:  # the stack in memory still runs
            LOG.error('Could not journal the operation before its undo: %s', journal_exc)
        return undo_rules.run_stack(self.stack, compensator, self._ran)

    def _ran(self, entry: dict, error: Optional[BaseException]) -> None:
        try:
            self._observer.undo_ran(self, entry, error)
        except exception.JournalError as journal_exc:
            LOG.error('Could not journal undo %s: %s', entry['name'], journal_exc)

    def fault(self, exc: BaseException, undo_failed: Optional[list] = None) -> dict:
        message = str(exc) or type(exc).__name__
        if undo_failed:
            message += ' (undo failed: %s)' % ', '.join(undo_failed)
        return {'exception': type(exc).__name__, 'message': message,
                'step': self.current_step, 'code': getattr(exc, 'code', None) or 500}

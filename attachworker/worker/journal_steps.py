"""The journal's records of steps and undos (the StepObserver interface of
attachworker.worker.journal.Journal).

When a record waits for its fsync, one rule (``StepRecords._record``): **everything
recovery decides by is on disk before the operation acts next.**

- A step's start that arms an undo (or a finish) waits: the step acts right after.
  So does the commit: the outcome is told right after (``.end``), and a commit lost
  would let recovery undo what was told done.
- A step's end that rearms or arms a resume, and a failure that drops an undo, do
  not: the operation's next record comes before it acts again (the next step's
  start), and that record waits for them, whatever it holds; the undo of a failed
  operation confirms them first (``before_undo``: if one was lost, the stack is
  written again from memory). What is still owed at the operation's end decides
  nothing any more: its end is terminal, and recovery does not look at it again.
- Everything else only reports (the trail, the summary, fields for the
  notification): a start that arms nothing is on disk within milliseconds, with the
  next commit; the end of a step that decides nothing is written with the operation's
  next write. Fields, once written without waiting, are confirmed by the next record
  that waits: a batch that failed fails that record (JournalError, before the step
  acts) instead of being taken as written.

Test-only fault injection: with ``ATTACHWORKER_TEST_CRASH_AT=<step>:<started|done>``
in the environment, the process kills itself with SIGKILL right after journalling
that step state (that record waited for, so it is on disk), as a power cut would.
With ``<step>:<state>:lost`` it dies as a power cut just before that record's fsync
would: inside its batch, holding the connection, so that the record and the rest of
the open batch are never committed (what earlier COMMITs fsynced stays). A record
that does not wait is lost at the worst point of its window: an end after its step
acted; a start after its step acted too (it is not written, and the process dies at
the operation's next record, inside that record's batch).
"""
import contextlib
import os
import signal
import sqlite3
import time
from typing import Any
from typing import Optional

from oslo_log import log as logging

from attachworker import exception
from attachworker.worker.journal_schema import dumps
from attachworker.worker.operation import StepObserver

LOG = logging.getLogger(__name__)

CRASH_ENV = 'ATTACHWORKER_TEST_CRASH_AT'
INSERT_STEP = ('INSERT INTO steps (op_id, seq, step, state, at) VALUES '
               '(?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM steps WHERE op_id=?), ?, ?, ?)')


class StepRecords(StepObserver):
    """Mixed into the Journal: uses its ``_transaction`` and ``_group``; the Journal's
    ``begin`` and ``finish`` use its ``_arm``, ``_flush_deferred`` and ``_unsynced``."""

    def _init_records(self) -> None:
        self._crash_at = os.environ.get(CRASH_ENV)
        self._lost_start: Optional[str] = None  # the op whose start the hook lost
        #: op id -> [(step, 'done', at)]: ends of steps that no decision of recovery
        #: needs, written in that operation's next write (the next step's start: no
        #: lock, no SAVEPOINT of their own); an operation is run by one thread at a
        #: time, its list by that thread only
        self._deferred: dict = {}
        #: op id -> [owes a decision, batches]: its records written without waiting
        #: (the operation's thread only; ``finish`` pops it, from any thread, once the
        #: operation ended); its next record that waits confirms them
        self._unsynced: dict = {}

    @staticmethod
    def _arm(db: sqlite3.Connection, op_id: str, entry: dict) -> None:
        db.execute('INSERT OR REPLACE INTO undos (op_id, seq, step, name, kind, args, state) '
                   'VALUES (?,?,?,?,?,?,?)', (op_id, entry['seq'], entry['step'],
                                              entry['name'], entry['kind'],
                                              dumps(entry['args']), entry['state']))

    def _record(self, op: Any, step: str, state: str, decides: Any = None,
                commit: bool = False) -> None:
        """The one rule of when a record waits (see the module docstring).
        ``decides(db)``: what the record arms, rearms, drops or commits."""
        if self._lost_start == op.id:  # its start was lost, and its step has acted
            with contextlib.suppress(exception.JournalError):
                with self._transaction(False, []):
                    self._die()  # inside the batch this record would join: lost too
            self._die()
        now = time.time()
        point = '%s:%s' % (step, state)
        crash = self._crash_at in (point, point + ':lost')
        lost = crash and self._crash_at.endswith(':lost')
        changed = getattr(op, 'journalled_version', None) != op.version
        if state == 'done' and not (decides or crash or changed):
            # lost in a crash, it changes nothing recovery decides, and the next step's
            # start (always written) says where the operation is: written with it
            self._deferred.setdefault(op.id, []).append((step, state, now))
            return
        unsynced = self._unsynced.get(op.id)  # [owes a decision, batches not waited for]
        wait = (crash and not lost) or commit or bool(unsynced and unsynced[0]) or bool(
            decides and state == 'started')
        if lost and not wait and state == 'started' and self._lost_start is None:
            # lost at the worst point of its window: after its step acted. Not written,
            # nor is anything the operation still owed; the next record dies instead
            self._lost_start = op.id
            return
        track: Optional[list] = None if wait else []
        with self._transaction(wait, track) as db:
            self._flush_deferred(db, op.id, (step, state, now))
            if changed:  # the fields changed since the last record: written too
                db.execute('UPDATE operations SET fields=? WHERE op_id=?',
                           (dumps(op.fields), op.id))
            if decides:
                decides(db)
            if lost:
                self._die()  # the batch stays open: never committed
        op.journalled_version = op.version
        if track is not None:
            unsynced = self._unsynced.setdefault(op.id, [False, []])
            unsynced[0] = unsynced[0] or bool(decides)
            unsynced[1].extend(track)
        elif unsynced:
            self._confirm(op)
        if crash:
            self._die()

    def _die(self) -> None:
        LOG.warning('%s=%s: killing this process now (test only)', CRASH_ENV,
                    self._crash_at)
        os.kill(os.getpid(), signal.SIGKILL)

    def _confirm(self, op: Any) -> None:
        """Were op's records that did not wait committed? JournalError if not (and its
        fields are written again with its next record)."""
        unsynced = self._unsynced.pop(op.id, None)
        try:
            if unsynced:
                self._group.confirm(unsynced[1])
        except Exception as exc:  # noqa: BLE001 - a failed batch's error, whatever it is
            op.journalled_version = None
            raise exception.JournalError(reason=str(exc)) from exc

    def _flush_deferred(self, db: sqlite3.Connection, op_id: str, *extra: tuple) -> None:
        """Write op_id's deferred records, then ``extra`` ones (the caller holds a
        transaction: a write refused before it began leaves the deferred ones kept)."""
        rows = self._deferred.pop(op_id, []) + list(extra)
        if rows:
            db.executemany(INSERT_STEP, [(op_id, op_id, step, state, at)
                                         for step, state, at in rows])

    def step_started(self, op: Any, step: str, entry: Optional[dict] = None) -> None:
        self._record(op, step, 'started',
                     (lambda db: self._arm(db, op.id, entry)) if entry else None)

    def step_done(self, op: Any, step: str, result: Any = None,
                  entries: tuple = (), commit: bool = False) -> None:
        def decides(db: sqlite3.Connection) -> None:
            for entry in entries:
                self._arm(db, op.id, entry)
            if commit:
                db.execute("UPDATE undos SET state='committed' WHERE op_id=? AND state="
                           "'armed'", (op.id,))
                db.execute('UPDATE operations SET committed=1 WHERE op_id=?', (op.id,))
        self._record(op, step, 'done', decides if entries or commit else None, commit)

    def step_failed(self, op: Any, step: str, exc: BaseException,
                    dropped: Optional[dict] = None) -> None:
        self._record(op, step, 'failed',
                     (lambda db: self._arm(db, op.id, dropped)) if dropped else None)

    def before_undo(self, op: Any) -> None:
        try:
            self._confirm(op)
        except exception.JournalError as exc:
            # a record that did not wait was lost (a rearm, a resume, a dropped undo):
            # the stack the undos run by is written again, so that recovery replays
            # the same one should the undo fail or the process die
            LOG.warning('A journal write of operation %s was lost (%s): its stack is '
                        'written again before its undo', op.id, exc)
            with self._transaction() as db:
                for entry in op.stack:
                    self._arm(db, op.id, entry)

    def undo_ran(self, op: Any, entry: dict, error: Optional[BaseException]) -> None:
        self.set_undo_state(op.id, entry, 'failed' if error else 'done')

    def set_undo_state(self, op_id: str, entry: dict, state: str) -> None:
        with self._transaction() as db:
            self._flush_deferred(db, op_id)
            db.execute(INSERT_STEP, (op_id, op_id, entry['name'], 'undo_' + state,
                                     time.time()))
            db.execute('UPDATE undos SET state=? WHERE op_id=? AND seq=?',
                       (state, op_id, entry['seq']))

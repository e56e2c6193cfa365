"""The fake virt driver's durable records: one row per instance in a SQLite database.

``<state_path>/fake-virt/records.sqlite`` (WAL, ``synchronous = FULL``, in a 0700
directory) has a row per instance with attachments or device reservations: its
record as JSON, and whether it holds reservations (a partial index on that flag is
what expiry reads, so nothing ever reads every instance). A call reads and rewrites
its instance's row in one transaction: its cost does not grow with the number of
instances, of reservations or with history.

Writes share fsyncs (``attachworker.worker.group_commit``, as the journal does) and
return once committed, so what a call returns is on disk. SQLite's write lock makes
each read-modify-write atomic between the threads of a process and between processes
(the workers of ``[worker] workers = N``, attachworker-manage beside the worker).

Why not a file per instance, as before: a durable replacement of a small file is a
temporary file, two fsyncs and a rename, and each rename frees an inode; on ext4 a
new file's inode search then skips every inode freed in the last seconds, so at a
few hundred attaches per second the kernel spent more CPU on that than the worker
spent on the attach (issue 9). Earlier layouts (``attachments.json`` of the first
release, ``instances/*.json`` with ``reserved/`` markers of the third) are imported
once, at start, then removed.
"""
import contextlib
import copy
import fcntl
import glob
import json
import os
import shutil
import sqlite3
from typing import Any
from typing import Callable
from typing import Iterator

from oslo_log import log as logging

from attachworker import exception
from attachworker.worker.group_commit import DurableDB

LOG = logging.getLogger(__name__)

EMPTY = {'attachments': {}, 'reservations': {}, 'reserved_at': {}}

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    uuid TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    reserved INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS instances_reserved ON instances (uuid) WHERE reserved = 1;
"""
#: every statement the store runs on its rows (their query plans are tested)
SELECT_ONE = 'SELECT record FROM instances WHERE uuid = ?'
SELECT_RESERVED = 'SELECT uuid, record FROM instances WHERE reserved = 1 ORDER BY uuid'
REPLACE = 'INSERT OR REPLACE INTO instances (uuid, record, reserved) VALUES (?, ?, ?)'
DELETE = 'DELETE FROM instances WHERE uuid = ?'


def _decode(text: Any, what: str) -> dict:
    try:
        value = json.loads(text)
    except (TypeError, ValueError) as exc:
        # Starting empty would silently forget attachments that exist.
        raise exception.VirtDriverError(reason='cannot read %s: %s' % (what, exc)) from exc
    return _checked(value, what)


def _checked(value: Any, what: str) -> dict:
    """An instance's record, its missing parts filled in; VirtDriverError if it is not
    one."""
    if not isinstance(value, dict):
        raise exception.VirtDriverError(reason='%s is not a record' % what)
    for key, default in EMPTY.items():
        value.setdefault(key, copy.deepcopy(default))
        if not isinstance(value[key], dict):
            raise exception.VirtDriverError(reason='%s: %s is not a mapping' % (what, key))
    return value


def _read_file(path: str) -> dict:
    try:
        with open(path, encoding='utf-8') as f:
            return _decode(f.read(), path)
    except OSError as exc:
        raise exception.VirtDriverError(reason='cannot read %s: %s' % (path, exc)) from exc


def check_instance(instance_uuid: Any) -> str:
    if not isinstance(instance_uuid, str) or not instance_uuid:
        raise exception.InvalidInput(reason='bad instance uuid %r' % (instance_uuid,))
    try:
        instance_uuid.encode('utf-8')
    except UnicodeEncodeError as exc:
        raise exception.InvalidInput(reason='bad instance uuid %r' % (instance_uuid,)) \
            from exc
    return instance_uuid


class Store:
    def __init__(self, directory: str) -> None:
        self.dir = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.path = os.path.join(directory, 'records.sqlite')
        try:
            self._store = DurableDB(self.path, lambda db: db.executescript(SCHEMA))
        except (sqlite3.Error, OSError) as exc:  # OSError: its writer lock file
            raise exception.VirtDriverError(
                reason='cannot open %s: %s' % (self.path, exc)) from exc
        self._group = self._store.group
        with self._store_lock():
            self._import_old_layouts()

    @contextlib.contextmanager
    def _store_lock(self) -> Iterator[None]:
        """Every process of the host, one at a time (for the import at start)."""
        with open(os.path.join(self.dir, '.lock'), 'a') as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            yield

    def load(self, instance_uuid: str) -> dict:
        """One instance's committed records."""
        check_instance(instance_uuid)
        try:
            rows = self._store.read_committed(SELECT_ONE, (instance_uuid,))
        except sqlite3.Error as exc:
            raise exception.VirtDriverError(
                reason='cannot read the records of %s: %s' % (instance_uuid, exc)) from exc
        if not rows:
            return copy.deepcopy(EMPTY)
        return _decode(rows[0][0], 'the records of %s' % instance_uuid)

    def update(self, instance_uuid: str, change: Callable[[dict], Any]) -> Any:
        """Apply ``change(instance record)`` to a copy and persist it if it changed;
        returns what ``change`` returned, once the row is committed (also when nothing
        changed: what ``change`` saw may have been another thread's newest write)."""
        check_instance(instance_uuid)
        try:
            with self._group.write() as db:
                row = db.execute(SELECT_ONE, (instance_uuid,)).fetchone()
                old = copy.deepcopy(EMPTY) if row is None else _decode(
                    row[0], 'the records of %s' % instance_uuid)
                new = copy.deepcopy(old)
                result = change(new)
                if new != old:
                    self._put(db, instance_uuid, new)
        except sqlite3.Error as exc:
            raise exception.VirtDriverError(
                reason='cannot write the records of %s: %s' % (instance_uuid, exc)) from exc
        return result

    @staticmethod
    def _put(db: sqlite3.Connection, instance_uuid: str, inst: dict) -> None:
        if not (inst['attachments'] or inst['reservations']):
            db.execute(DELETE, (instance_uuid,))
            return
        try:
            text = json.dumps(inst, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise exception.VirtDriverError(
                reason='the records of %s cannot be stored: %s' % (instance_uuid, exc)) \
                from exc
        db.execute(REPLACE, (instance_uuid, text, 1 if inst['reservations'] else 0))

    def reservations(self) -> dict:
        """{instance uuid: {volume id: [device, reserved_at]}}, committed ones."""
        try:
            rows = self._store.read_committed(SELECT_RESERVED)
        except sqlite3.Error as exc:
            raise exception.VirtDriverError(
                reason='cannot read the reservations: %s' % exc) from exc
        found = {}
        for instance_uuid, text in rows:
            try:
                inst = _decode(text, 'the records of %s' % instance_uuid)
            except exception.AttachWorkerException as exc:
                # one bad row must not hide every other reservation (nor stop the
                # housekeeping round this runs in)
                LOG.error('Reservations of instance %s cannot be read: %s', instance_uuid,
                          exc)
                continue
            found[instance_uuid] = {
                vol: [device, inst['reserved_at'].get(vol, 0.0)]
                for vol, device in inst['reservations'].items()}
        return found

    def _import_old_layouts(self) -> None:
        """Rows from the files of earlier releases, in one transaction; the files go
        once it is committed (a crash in between imports the same files again). The
        files replace the rows of the instances they name: they are what the release
        that wrote them last knew. (Stop that release before starting this one on a
        host: what it writes after the import is not imported.)"""
        first = os.path.join(self.dir, 'attachments.json')
        per_instance = sorted(glob.glob(os.path.join(self.dir, 'instances', '*.json')))
        records = {}
        if os.path.exists(first):
            state = _read_file(first)
            instances = state.get('instances') or {}
            if not isinstance(instances, dict):
                raise exception.VirtDriverError(reason='%s has no instances' % first)
            for instance_uuid, inst in instances.items():
                records[instance_uuid] = (first, _checked(inst, first))
        for path in per_instance:  # newer than attachments.json, which they replaced
            records[os.path.basename(path)[:-len('.json')]] = (path, _read_file(path))
        if records:
            try:
                with self._group.write() as db:
                    for instance_uuid, (path, inst) in sorted(records.items()):
                        try:
                            check_instance(instance_uuid)
                        except exception.InvalidInput as exc:
                            raise exception.VirtDriverError(
                                reason='%s: %s' % (path, exc)) from exc
                        self._put(db, instance_uuid, inst)
            except sqlite3.Error as exc:
                raise exception.VirtDriverError(
                    reason='cannot import the records of an earlier release: %s' % exc) \
                    from exc
            LOG.info('Imported the fake virt records of %d instances into %s',
                     len(records), self.path)
        for path in per_instance + [first, os.path.join(self.dir, 'reservations.json')]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        for name in ('instances', 'reserved', 'locks'):
            shutil.rmtree(os.path.join(self.dir, name), ignore_errors=True)

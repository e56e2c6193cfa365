"""The fake virt driver's durable records: one small JSON file per instance.

``<state_path>/fake-virt/instances/<instance uuid>.json`` holds that instance's
attachments and device reservations; an empty file ``reserved/<instance uuid>``
marks each instance that has reservations (for their expiry), so nothing ever reads
all instances. A call reads and rewrites only the file of its instance (and creates
or removes its marker), so its cost does not grow with the number of instances, of
reservations or with history. Files are written atomically (temporary file,
fsync, rename, directory fsync) with mode 0600, under the instance's lock: a thread
lock and an flock on ``locks/<instance uuid>.lock`` shared by every process of the
host (calls for different instances never wait for each other). A journal of the first release
(``attachments.json``, every instance in one file) is split up once, and the
reservation index of the second (``reservations.json``) becomes markers once.
"""
import contextlib
import copy
import fcntl
import json
import os
import threading
from typing import Any
from typing import Callable
from typing import Iterator
from typing import Optional

from oslo_log import log as logging

from attachworker import exception
from attachworker.virt.state_files import fsync_dir as _fsync_dir
from attachworker.virt.state_files import write_json as _write

LOG = logging.getLogger(__name__)

EMPTY = {'attachments': {}, 'reservations': {}, 'reserved_at': {}}


def _read(path: str, default: Any) -> Any:
    try:
        with open(path, encoding='utf-8') as f:
            value = json.load(f)
    except FileNotFoundError:
        return copy.deepcopy(default)
    except (OSError, ValueError) as exc:
        # Starting empty would silently forget attachments that exist.
        raise exception.VirtDriverError(reason='cannot read %s: %s' % (path, exc)) from exc
    if not isinstance(value, dict):
        raise exception.VirtDriverError(reason='%s is not a state file' % path)
    return value


class Store:
    def __init__(self, directory: str) -> None:
        self.dir = directory
        self._instances = os.path.join(directory, 'instances')
        self._reserved = os.path.join(directory, 'reserved')
        self._guard = threading.Lock()
        self._locks: dict = {}  # lock file name -> [thread lock, users]
        os.makedirs(self._instances, mode=0o700, exist_ok=True)
        os.makedirs(self._reserved, mode=0o700, exist_ok=True)
        os.makedirs(os.path.join(directory, 'locks'), mode=0o700, exist_ok=True)
        with self.locked():
            self._split_old_file()
            self._index_to_markers()

    def path(self, instance_uuid: str) -> str:
        if not instance_uuid or '/' in instance_uuid or instance_uuid.startswith('.'):
            raise exception.InvalidInput(reason='bad instance uuid %r' % (instance_uuid,))
        return os.path.join(self._instances, instance_uuid + '.json')

    @contextlib.contextmanager
    def locked(self, instance_uuid: Optional[str] = None) -> Iterator[None]:
        """One instance's records (without one: the whole store, for the upgrades at
        start): this process's threads and other processes, one at a time."""
        name = '.lock' if instance_uuid is None else os.path.join(
            'locks', os.path.basename(self.path(instance_uuid))[:-len('.json')] + '.lock')
        with self._guard:
            entry = self._locks.setdefault(name, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0], open(os.path.join(self.dir, name), 'a') as lock_file:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
                yield
        finally:
            with self._guard:
                entry[1] -= 1
                if not entry[1]:
                    del self._locks[name]

    def load(self, instance_uuid: str) -> dict:
        """One instance's records (call with its lock held)."""
        inst = _read(self.path(instance_uuid), EMPTY)
        for key, value in EMPTY.items():
            inst.setdefault(key, copy.deepcopy(value))
        return inst

    def update(self, instance_uuid: str, change: Callable[[dict], Any]) -> Any:
        """Apply ``change(instance record)`` to a copy and persist it if it changed
        (call with its lock held); returns what ``change`` returned."""
        old = self.load(instance_uuid)
        new = copy.deepcopy(old)
        result = change(new)
        if new != old:
            # the marker exists whenever the file holds a reservation: made before
            # the file gains its first, removed after it lost its last
            if new['reservations']:
                self._index_instance(instance_uuid, new)
            if new['attachments'] or new['reservations']:
                _write(self._instances, self.path(instance_uuid), new)
            elif os.path.exists(self.path(instance_uuid)):
                os.unlink(self.path(instance_uuid))
                _fsync_dir(self._instances)
            if not new['reservations']:
                self._index_instance(instance_uuid, new)
        return result

    def _index_instance(self, instance_uuid: str, inst: dict) -> None:
        marker = os.path.join(self._reserved, instance_uuid)
        try:
            if inst['reservations']:
                if os.path.exists(marker):
                    return
                os.close(os.open(marker, os.O_CREAT | os.O_WRONLY, 0o600))
            elif os.path.exists(marker):
                os.unlink(marker)
            else:
                return
            _fsync_dir(self._reserved)
        except OSError as exc:
            raise exception.VirtDriverError(reason='cannot mark %s: %s' % (marker, exc)) \
                from exc

    def reservations(self) -> dict:
        """{instance uuid: {volume id: [device, reserved_at]}}; takes each marked
        instance's lock in turn (call with no lock held)."""
        found = {}
        for instance_uuid in sorted(os.listdir(self._reserved)):
            try:
                with self.locked(instance_uuid):
                    inst = self.load(instance_uuid)
                    if not inst['reservations']:
                        # a crash between the instance's file and its marker
                        self._index_instance(instance_uuid, inst)
            except exception.AttachWorkerException as exc:
                # one bad file must not hide every other reservation (nor stop the
                # housekeeping round this runs in)
                LOG.error('Reservations of instance %s cannot be read: %s', instance_uuid,
                          exc)
                continue
            if inst['reservations']:
                found[instance_uuid] = {
                    vol: [device, inst['reserved_at'].get(vol, 0.0)]
                    for vol, device in inst['reservations'].items()}
        return found

    def _index_to_markers(self) -> None:
        old = os.path.join(self.dir, 'reservations.json')
        if os.path.exists(old):
            for instance_uuid in _read(old, {}):
                self._index_instance(instance_uuid, self.load(instance_uuid))
            os.unlink(old)

    def _split_old_file(self) -> None:
        old = os.path.join(self.dir, 'attachments.json')
        if not os.path.exists(old):
            return
        state = _read(old, {})
        for instance_uuid, inst in (state.get('instances') or {}).items():
            record = dict(copy.deepcopy(EMPTY), **inst)
            _write(self._instances, self.path(instance_uuid), record)
            if record['reservations']:
                self._index_instance(instance_uuid, record)
        os.unlink(old)

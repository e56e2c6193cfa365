"""Device names: the next free target of a guest, and reservations of names.

Reservations are kept in small files under ``<state_path>/libvirt``, one per
instance with any (``reservations/<instance uuid>.json``: volume id -> device and
time), each change under an exclusive ``flock`` of the instance's lock file
(``locks/<instance uuid>.lock``), rather than in the domain's metadata:

* two worker processes of a host must never hand out the same name, and libvirt
  has no compare-and-set on metadata: a host-wide lock is needed wherever the
  reservations are kept, and the lock alone is what makes them safe;
* a reservation is a short-lived claim (``[worker] reservation_timeout``), not
  part of the guest: keeping it in the persistent definition would rewrite the
  domain's XML on disk for every reserve and release;
* ``reservations()`` (called by every reserve and by each expiry run) reads the
  files of the instances with reservations, not the metadata of every domain
  over the libvirt connection, and a reservation is released even while libvirtd
  is down.

The same per-instance lock serialises the driver's other changes of an instance
(the check-attach-forget of an attach, the domain metadata): a name is always
either reserved or attached, never neither while it is being used. A
reservation of a domain that disappeared is harmless and expires as any other.
"""
import contextlib
import fcntl
import json
import os
import time
from typing import Any
from typing import Iterator
from typing import Optional

from oslo_log import log as logging
from oslo_utils import uuidutils

from attachworker import exception
from attachworker.virt import state_files
from attachworker.virt.state_files import letters

LOG = logging.getLogger(__name__)

#: Highest number of names handed out per bus (virtio-scsi: 256 units; Nova's cap).
MAX_DEVICES = 256


def next_free(prefix: str, used: set) -> Optional[str]:
    """The first ``prefix`` + letters not in ``used``, from ``b``: ``a`` is left to
    root disks (a guest booting from another bus still gets sdb first; sda may be
    asked for by name)."""
    for index in range(1, MAX_DEVICES + 1):
        name = prefix + letters(index)
        if name not in used:
            return name
    return None


class Reservations:
    def __init__(self, state_path: str) -> None:
        root = os.path.join(state_path, 'libvirt')
        self._dir = os.path.join(root, 'reservations')
        self._locks = os.path.join(root, 'locks')
        for directory in (self._dir, self._locks):
            os.makedirs(directory, mode=0o700, exist_ok=True)

    @staticmethod
    def _check(instance_uuid: str) -> str:
        if not uuidutils.is_uuid_like(instance_uuid):
            raise exception.InvalidInput(reason='bad instance uuid %r' % (instance_uuid,))
        return instance_uuid

    @contextlib.contextmanager
    def locked(self, instance_uuid: str) -> Iterator[None]:
        """The instance's lock: every thread and process of the host, one at a time.
        (Each call opens the file anew: flock excludes separate opens in one
        process too.)"""
        path = os.path.join(self._locks, self._check(instance_uuid) + '.lock')
        with open(path, 'a') as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def _path(self, instance_uuid: str) -> str:
        return os.path.join(self._dir, self._check(instance_uuid) + '.json')

    def _read(self, path: str) -> dict:
        try:
            with open(path, encoding='utf-8') as f:
                value = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise exception.VirtDriverError(reason='cannot read %s: %s' % (path, exc)) from exc
        if not isinstance(value, dict):
            raise exception.VirtDriverError(reason='%s is not a reservation file' % path)
        return value

    def load(self, instance_uuid: str) -> dict:
        """{volume id: {'device': '/dev/sdc', 'reserved_at': 1764580927.5}} (locked)."""
        return self._read(self._path(instance_uuid))

    def save(self, instance_uuid: str, held: dict) -> None:
        """Replace the instance's reservations, atomically and durably (locked)."""
        path = self._path(instance_uuid)
        if not held:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        state_files.write_json(self._dir, path, held)

    def add(self, instance_uuid: str, volume_id: str, device: str) -> None:
        held = self.load(instance_uuid)
        held[volume_id] = {'device': device, 'reserved_at': time.time()}
        self.save(instance_uuid, held)

    def drop(self, instance_uuid: str, volume_id: str) -> bool:
        held = self.load(instance_uuid)
        if held.pop(volume_id, None) is None:
            return False
        self.save(instance_uuid, held)
        return True

    def all(self) -> list[dict]:
        """Every reservation of the host, in the driver contract's format."""
        found = []
        for name in sorted(os.listdir(self._dir)):
            instance_uuid, ext = os.path.splitext(name)
            if ext != '.json' or not uuidutils.is_uuid_like(instance_uuid):
                continue
            try:
                with self.locked(instance_uuid):
                    held = self.load(instance_uuid)
            except exception.AttachWorkerException as exc:
                # one bad file must not hide every other reservation from expiry
                LOG.error('Reservations of instance %s cannot be read: %s', instance_uuid,
                          exc)
                continue
            for volume_id, entry in sorted(held.items()):
                found.append({'instance_uuid': instance_uuid, 'volume_id': volume_id,
                              'device': entry['device'],
                              'reserved_at': float(entry['reserved_at'])})
        return found


def holder(held: dict, device: str) -> Optional[Any]:
    """The volume that has ``device`` reserved in ``held``, or None."""
    return next((vol for vol, entry in held.items() if entry['device'] == device), None)

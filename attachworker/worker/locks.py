"""Locks shared by every attachworker process of a host, under ``state_path``.

* ``instance_lock`` / ``volume_lock``: external locks (oslo.concurrency, a file
  per name under ``state_path/locks``) taken by the pipeline, recovery and
  ``attachworker-manage``. Two worker processes with one host name and state_path
  (a rolling restart overlap, ``[worker] workers = N``) serialise on them as the
  threads of one process do.
* ``OwnerLock``: each process holds an exclusive ``flock`` on a file named after
  its identity for as long as it lives. An owner is alive exactly while that lock
  is held: the kernel drops it when the process dies, kill -9 included, and a
  reused pid cannot hold it by accident.
"""
import contextlib
import fcntl
import os
from typing import Iterator
from typing import Optional

from oslo_concurrency import lockutils


def lock_path(state_path: str) -> str:
    return os.path.join(state_path, 'locks')


@contextlib.contextmanager
def instance_lock(state_path: str, instance_uuid: str) -> Iterator[None]:
    with lockutils.lock('instance-%s' % instance_uuid, external=True,
                        lock_path=lock_path(state_path)):
        yield


@contextlib.contextmanager
def volume_lock(state_path: str, volume_id: str) -> Iterator[None]:
    with lockutils.lock('volume-%s' % volume_id, external=True,
                        lock_path=lock_path(state_path)):
        yield


def process_identity(pid: Optional[int] = None) -> str:
    """``pid:starttime``: a name for a process that a reused pid does not share."""
    pid = pid or os.getpid()
    try:
        with open('/proc/%d/stat' % pid) as f:
            start = f.read().rsplit(')', 1)[1].split()[19]
    except (OSError, IndexError):
        start = '0'
    return '%d:%s' % (pid, start)


def _owner_file(state_path: str, owner: str) -> str:
    return os.path.join(state_path, 'owners', owner.replace(':', '-') + '.lock')


class OwnerLock:
    """Held by a live process for its whole life (until ``release``)."""

    def __init__(self, state_path: str, owner: str) -> None:
        path = _owner_file(state_path, owner)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._fd: Optional[int] = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def owner_alive(state_path: str, owner: str) -> bool:
    """Does a live process hold ``owner``'s lock? (Never blocks.)"""
    path = _owner_file(state_path, owner)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we may have taken
    with contextlib.suppress(OSError):
        os.unlink(path)  # nobody will take it again: the owner is gone
    return False

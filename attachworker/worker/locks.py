"""Locks shared by every attachworker process of a host, under ``state_path``.

* ``instance_lock`` / ``volume_lock``: locks of every process and thread of the host,
  taken by the pipeline, recovery and ``attachworker-manage``. Two worker processes
  with one host name and state_path (``[worker] workers = N``, a restart overlap)
  serialise on them as the threads of one process do. Each name is one byte of a
  single file, ``state_path/locks/names``, locked with an open file description lock
  (``F_OFD_SETLKW``: held per open file, so two threads exclude each other as two
  processes do; waiters sleep in the kernel; a killed holder's lock goes with its
  file). oslo.concurrency's external locks create a file per name and never remove
  it: one inode per volume and per instance ever seen, forever, and 1.4 ms of system
  CPU per attach here (the volume's and often the instance's files are new).
  The byte is a 62-bit hash of the name: two names share one with a chance of 2^-62.
* ``OwnerLock``: each process holds an exclusive ``flock`` on a file named after
  its identity for as long as it lives. An owner is alive exactly while that lock
  is held: the kernel drops it when the process dies, kill -9 included, and a
  reused pid cannot hold it by accident.
"""
import contextlib
import fcntl
import hashlib
import os
import struct
from typing import ContextManager
from typing import Iterator
from typing import Optional

from oslo_concurrency import lockutils

from attachworker import exception

NAMES = 'names'


def lock_path(state_path: str) -> str:
    return os.path.join(state_path, 'locks')


def _byte(name: str) -> int:
    digest = hashlib.blake2b(name.encode('utf-8', 'surrogatepass'), digest_size=8)
    return int.from_bytes(digest.digest(), 'big') >> 2


def _ofd(fd: int, kind: int, start: int) -> None:
    # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks)
    fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, struct.pack('hhqqi4x', kind, os.SEEK_SET,
                                                    start, 1, 0))


@contextlib.contextmanager
def named_lock(state_path: str, name: str) -> Iterator[None]:
    """Exclusive across the threads and processes of the host, for ``name``.

    The threads of one process queue first on oslo.concurrency's internal lock of
    that name, in about the order they came (the kernel wakes the waiters of a byte
    lock all at once, in no order), then take the byte."""
    with lockutils.lock(name):
        fd = _taken(state_path, name)
        try:
            yield
        finally:
            os.close(fd)  # the lock goes with its open file description


def _taken(state_path: str, name: str) -> int:
    """The one place an error taking a lock (EMFILE, ENOLCK, ENOSPC, a filesystem
    without OFD locks...) becomes LocksUnavailable, naming the directory."""
    try:
        return _locked(os.path.join(lock_path(state_path), NAMES), _byte(name))
    except OSError as exc:
        raise exception.LocksUnavailable(path=lock_path(state_path),
                                         reason=exc.strerror or exc) from exc


@contextlib.contextmanager
def instance_and_volume(state_path: str, instance_uuid: Optional[str],
                        volume_id: Optional[str]) -> Iterator[None]:
    """The two locks of an operation, always in this order (the instance's, then the
    volume's), so that no two holders of one each wait on the other."""
    with instance_lock(state_path, instance_uuid or 'none'), \
            volume_lock(state_path, volume_id or 'none'):
        yield


def _locked(path: str, byte: int) -> int:
    """A descriptor of ``path`` holding ``byte``'s lock; should the file have been
    removed or replaced meanwhile, the lock is taken again on the one now there."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            continue
        try:
            _ofd(fd, fcntl.F_WRLCK, byte)
            held = os.fstat(fd)
            now = os.stat(path)
            if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                return fd
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def probe(state_path: str) -> None:
    """Take and let go of a lock at start-up: LocksUnavailable, naming the directory,
    rather than casts that fail after their acknowledgement."""
    with named_lock(state_path, 'probe'):
        pass


def instance_lock(state_path: str, instance_uuid: str) -> ContextManager[None]:
    return named_lock(state_path, 'instance-%s' % instance_uuid)


def volume_lock(state_path: str, volume_id: str) -> ContextManager[None]:
    return named_lock(state_path, 'volume-%s' % volume_id)


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

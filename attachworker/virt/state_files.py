"""What virt drivers keep on the host's disk: small JSON files written atomically and
durably, and the disk names Linux gives (``vdb``, ``sdaa``...). Shared by the fake
driver's store and the libvirt driver's device reservations."""
import contextlib
import json
import os
import tempfile
from typing import Any

from attachworker import exception


def letters(index: int) -> str:
    """0 -> 'a', 25 -> 'z', 26 -> 'aa': the suffixes Linux gives disks."""
    name = ''
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        name = chr(ord('a') + rest) + name
    return name


def fsync_dir(directory: str) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json(directory: str, path: str, value: Any) -> None:
    """Replace ``path`` (in ``directory``) with ``value`` as JSON: a temporary file,
    fsync, rename, directory fsync. VirtDriverError when it cannot."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.write-', suffix='.tmp')
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            json.dump(value, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(directory)  # the rename is durable once this is
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise exception.VirtDriverError(reason='cannot write %s: %s' % (path, exc)) from exc

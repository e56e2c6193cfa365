"""bench-attach's slower disk: the preloaded fsync and fdatasync sleep first."""
import os
import shutil
import subprocess
import sys

import pytest

from tests.unit.tools.toollib import load

slow_fsync = load('slow_fsync')

FLUSH = ('import os, sys, time\n'
         'fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT)\n'
         'os.write(fd, b"x")\n'
         'began = time.monotonic()\n'
         'os.fsync(fd)\n'
         'os.fdatasync(fd)\n'
         'print(time.monotonic() - began)\n')


def flush_seconds(env, path):
    out = subprocess.run([sys.executable, '-c', FLUSH, str(path)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return float(out)


@pytest.mark.skipif(not (shutil.which('cc') or shutil.which('gcc')), reason='no compiler')
def test_each_flush_sleeps_first_and_still_flushes(tmp_path):
    env = slow_fsync.environment(300, str(tmp_path))
    assert env['SLOW_FSYNC_MS'] == '300' and env['LD_PRELOAD'].endswith('slow_fsync.so')
    # two flushes, each at least 300 ms (a lower bound: a busy machine only adds)
    assert flush_seconds(env, tmp_path / 'f') >= 0.6
    assert (tmp_path / 'f').read_bytes() == b'x'


def test_zero_leaves_the_environment_as_it_is(tmp_path):
    env = slow_fsync.environment(0, str(tmp_path))
    assert env == dict(os.environ)
    assert not list(tmp_path.iterdir())   # nothing built

"""The environment of a process whose disk flushes take longer: every fsync and
fdatasync (SQLite's commits among them) sleeps first (slow_fsync.c, built here
with the C compiler, preloaded). This VM's disk flushes in about 0.4 ms; a real
disk, or a network block device under ``state_path``, takes milliseconds."""
import os
import pathlib
import shutil
import subprocess

SOURCE = pathlib.Path(__file__).with_name('slow_fsync.c')


def environment(ms: float, build_dir: str) -> dict:
    """os.environ plus what makes each flush take ``ms`` ms longer (0: as it is)."""
    env = dict(os.environ)
    if not ms:
        return env
    compiler = shutil.which('cc') or shutil.which('gcc')
    if compiler is None:
        raise SystemExit('--fsync-ms needs a C compiler (apt-get install gcc)')
    library = os.path.join(build_dir, 'slow_fsync.so')
    subprocess.run([compiler, '-shared', '-fPIC', '-O2', '-o', library, str(SOURCE),
                    '-ldl'], check=True)
    env['LD_PRELOAD'] = ' '.join(filter(None, (env.get('LD_PRELOAD'), library)))
    env['SLOW_FSYNC_MS'] = str(int(ms))
    return env

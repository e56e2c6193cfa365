"""The modules of tools/lib, loaded from their files (tools/lib is not a package), and
what the tests of tools/ share (the `marker` fixture: conftest.py)."""
import importlib.util
import pathlib
import sys

from tests.harness import wait_for  # noqa: F401  (what the tests of tools/ import)

ROOT = pathlib.Path(__file__).resolve().parents[3]
LIB = ROOT / 'tools' / 'lib'

SLEEP_AS_MARKER = 'exec -a "$0" sleep 300'   # argv[0] of the sleep becomes the marker


def load(name):
    """tools/lib/NAME.py as a fresh module; what it imports of tools/lib comes from there."""
    if str(LIB) not in sys.path:
        sys.path.append(str(LIB))
    spec = importlib.util.spec_from_file_location(name, LIB / ('%s.py' % name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


daemons = load('daemons')


def slept_as_marker(pid, marker):
    """Has the process started with SLEEP_AS_MARKER exec'd its sleep (its trap, if any,
    is set by then)? ``daemons.start`` returns once the marker shows, and bash's own
    argv carries it before the exec: waited for, not assumed."""
    return wait_for(lambda: daemons.cmdline(pid) == [marker, '300'])

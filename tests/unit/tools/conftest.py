import os
import signal
import uuid

import pytest

from tests.unit.tools.toollib import daemons


@pytest.fixture
def marker():
    """A tag for this test's processes (``exec -a MARKER sleep``); whatever carries it is
    killed by PID at the end, so a failing test leaves nothing behind."""
    tag = 'aw-tools-test-%s' % uuid.uuid4().hex[:12]
    yield tag
    for pid in daemons.find(tag):
        os.kill(pid, signal.SIGKILL)

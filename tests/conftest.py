"""Fixtures shared by the functional and integration tests."""
import pytest

from tests.harness import Controller


@pytest.fixture
def controller():
    """connect(worker, **kwargs) -> Controller (rpcapi + OutcomeWatcher), closed after."""
    opened = []

    def connect(worker, **kwargs):
        ctl = Controller(worker, **kwargs)
        opened.append(ctl)
        return ctl
    yield connect
    for ctl in opened:
        ctl.close()

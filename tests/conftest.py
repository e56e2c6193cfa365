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


# --- figures -------------------------------------------------------------------------
# What a test prints (throughput, counts, timings) is a figure it reports. pytest
# captures it; this shows every passing test's figures in one section at the end of
# the run, before pytest's summary line.
_FIGURES = []


def pytest_runtest_logreport(report):
    if report.when == 'call' and report.passed and report.capstdout.strip():
        _FIGURES.append((report.nodeid, report.capstdout.strip()))


def pytest_terminal_summary(terminalreporter):
    if not _FIGURES:
        return
    terminalreporter.section('figures reported by the tests')
    for nodeid, text in _FIGURES:
        terminalreporter.write_line(nodeid)
        for line in text.splitlines():
            terminalreporter.write_line('    ' + line)

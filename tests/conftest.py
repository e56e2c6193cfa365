"""Fixtures shared by the functional and integration tests; a guard for all tests."""
import os
import threading

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


# --- no silent exit ------------------------------------------------------------------
# The worker's last-resort timers end the process with os._exit(0). One left running by
# a test would end pytest itself, quietly, with status 0 and the rest of the suite never
# run. In pytest's own process os._exit only records the call (and ends the calling
# thread); the run then fails. Processes forked from it exit as usual.
_PYTEST_PID = os.getpid()
_REAL_EXIT = os._exit
_EXITS = []


def _guarded_exit(code):
    if os.getpid() != _PYTEST_PID:
        _REAL_EXIT(code)
    _EXITS.append((code, threading.current_thread().name))
    raise SystemExit(code)


os._exit = _guarded_exit


def pytest_sessionfinish(session, exitstatus):
    if _EXITS:
        print('\nos._exit was called in the test process (thread, code): %s' % (
            ', '.join('%s %s' % (name, code) for code, name in _EXITS)))
        session.exitstatus = 1


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

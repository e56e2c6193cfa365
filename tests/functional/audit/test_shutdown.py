"""SIGTERM: serve stops taking messages, finishes what it holds, exits 0; a restart
picks up the rest. Nothing lost, nothing stored twice. SIGINT does the same."""
import signal
import time

import pytest

from attachworker.audit import models
from attachworker.audit import testing
from tests.functional.audit.harness import publish_in_threads
from tests.functional.audit.harness import wait_until

pytestmark = pytest.mark.functional

MESSAGES = 3000


@pytest.mark.slow
def test_sigterm_drains_and_a_restart_finishes(broker, backend, make_serve):
    messages = [testing.message('detach', 'start', testing.payload('detach', 'start'))
                for _ in range(MESSAGES)]
    first = make_serve().start()
    publish_in_threads(broker.publisher, messages)
    wait_until(lambda: backend.count(models.events) >= MESSAGES // 5, 60,
               'a fifth stored', interval=0.02)
    began = time.monotonic()
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(30) == 0
    stopped_after = time.monotonic() - began
    first_counts = first.counts()
    assert backend.count(models.events) == first_counts['stored']  # all it took: stored

    second = make_serve().start()
    wait_until(lambda: backend.count(models.events) == MESSAGES, 120, 'the rest stored')
    wait_until(lambda: broker.unsettled() == 0, 60, 'every message handled and acked')
    second.proc.send_signal(signal.SIGINT)
    assert second.proc.wait(30) == 0
    second_counts = second.counts()
    print('\n[%s] SIGTERM: stopped in %.1fs after storing %d; the restart stored %d '
          '(%d duplicates), then stopped on SIGINT'
          % (backend.name, stopped_after, first_counts['stored'],
             second_counts['stored'], second_counts['duplicate']))
    assert first_counts['stored'] < MESSAGES, 'the signal came mid-stream'
    assert first_counts['stored'] + second_counts['stored'] == MESSAGES
    # what the first one stored it also acknowledged before exiting
    assert second_counts['duplicate'] == 0
    assert 'finishing the ones in flight' in first.logs()

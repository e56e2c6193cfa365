"""``attachworker-audit serve`` with ``[metrics] port`` set: its endpoint counts what it
stored, the duplicates and the rejected messages, over the real RabbitMQ."""
import socket
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
import pytest

from attachworker.audit import models
from attachworker.audit import testing
from tests.functional.audit.harness import wait_until

pytestmark = pytest.mark.functional


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def scrape(port):
    text = urllib.request.urlopen('http://127.0.0.1:%d/metrics' % port, timeout=5).read()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode())
            for s in family.samples}


@pytest.mark.parametrize('backend', ['sqlite'], indirect=True)
def test_the_audit_endpoint_counts_stored_duplicates_and_rejected(broker, backend,
                                                                  make_serve):
    port = free_port()
    serve = make_serve()
    serve.config.write_text(serve.config.read_text() + '[metrics]\nport = %d\n' % port)
    serve.start()
    publisher = broker.publisher()
    for n in range(5):
        publisher.notify('attach', 'start', testing.payload('attach', 'start',
                                                            request_id='req-m-%d' % n))
    broker.publish_raw(b'{"not": "a notification"')  # truncated JSON: rejected
    wait_until(lambda: backend.count(models.events) == 5
               and backend.count(models.rejected) == 1, 60, 'events and the rejected row')

    def counted(result):
        return scrape(port).get(('attachworker_audit_messages_total',
                                 (('result', result),)), 0)
    wait_until(lambda: counted('stored') == 5 and counted('rejected') == 1, 10,
               'the counts on the endpoint')
    samples = scrape(port)
    assert samples[('attachworker_audit_lag_seconds_count', ())] == 5
    assert counted('duplicate') == 0
    assert serve.stop() == 0

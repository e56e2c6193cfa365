"""A broker that cannot be reached at start-up (issue 12, item 6): the log names it
(host and port, never the password), and SIGTERM stops the process at once."""
import signal
import subprocess
import time

from tests.functional.audit import harness as audit_harness
from tests.harness import BIN

DEAD = 'rabbit://guest:s3cret-broker-pw@127.0.0.1:1/'


def stops_at_once(proc, log, what, wait_for='connecting to the message broker at 127.0.0.1:1'):
    deadline = time.monotonic() + 30
    while wait_for not in (log.read_text() if log.exists() else ''):
        assert proc.poll() is None and time.monotonic() < deadline, what
        time.sleep(0.1)
    time.sleep(1.5)  # well into oslo.messaging's retries
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(10)
    return code, time.monotonic() - t0


def test_the_worker_names_the_broker_and_stops_at_once(make_worker):
    worker = make_worker(transport_url=DEAD, rabbit_retry_interval=1)
    proc = subprocess.Popen([str(BIN / 'attachworker-compute'), '--config-file',
                             str(worker.config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    # it says, every few seconds, which broker it cannot reach and how it retries
    code, took = stops_at_once(proc, worker.log, 'worker', wait_for='still cannot reach the '
                               'message broker at 127.0.0.1:1; retrying every 1 s')
    print('worker, broker unreachable: SIGTERM to exit %.1f s' % took)
    assert code == 0 and took < 3
    assert 's3cret-broker-pw' not in worker.logs()


def test_the_audit_consumer_names_the_broker_and_stops_at_once(tmp_path):
    broker = audit_harness.Broker(exchange='aw-dead', pool='aw-dead-pool')
    serve = audit_harness.Serve(tmp_path / 'audit', broker,
                                'sqlite:///%s' % (tmp_path / 'audit.sqlite'))
    assert serve.command('db', 'upgrade').returncode == 0
    serve.config.write_text(serve.config.read_text().replace(audit_harness.RABBIT, DEAD))
    proc = subprocess.Popen([str(BIN / 'attachworker-audit'), '--config-file',
                             str(serve.config), 'serve'], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    code, took = stops_at_once(proc, serve.log, 'audit consumer')
    print('audit consumer, broker unreachable: SIGTERM to exit %.1f s' % took)
    assert code == 0 and took < 3
    assert 's3cret-broker-pw' not in serve.logs()
    broker.close()

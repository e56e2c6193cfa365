"""A real Prometheus scrapes a worker that attaches real Cinder volumes, and its HTTP
API then reports exactly the attaches (and the failure) the test made.

Prometheus is Debian's ``prometheus`` package (tools/run-tests installs it when it is
missing); it runs here on loopback ports of its own, with its data in tmp_path.
"""
import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
import uuid

import pytest

from tests.integration.conftest import caller_context

PROMETHEUS = shutil.which('prometheus') or '/usr/bin/prometheus'


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture
def prometheus(tmp_path):
    """start(target_port) -> query(promql) -> {labels tuple: value}."""
    procs = []

    def start(target):
        port = free_port()
        config = tmp_path / 'prometheus.yml'
        config.write_text(
            'global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n'
            'scrape_configs:\n  - job_name: attachworker\n'
            '    static_configs:\n      - targets: ["127.0.0.1:%d"]\n' % target)
        log = open(tmp_path / 'prometheus.log', 'w')
        procs.append(subprocess.Popen(
            [PROMETHEUS, '--config.file', str(config), '--storage.tsdb.path',
             str(tmp_path / 'tsdb'), '--web.listen-address', '127.0.0.1:%d' % port],
            stdout=log, stderr=subprocess.STDOUT))
        base = 'http://127.0.0.1:%d' % port
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(base + '/-/ready', timeout=2).read()
                break
            except OSError as exc:
                if procs[-1].poll() is not None or time.monotonic() > deadline:
                    raise AssertionError('prometheus did not start:\n'
                                         + (tmp_path / 'prometheus.log').read_text()[-2000:]
                                         ) from exc
                time.sleep(0.2)

        def query(promql):
            url = base + '/api/v1/query?' + urllib.parse.urlencode({'query': promql})
            answer = json.loads(urllib.request.urlopen(url, timeout=5).read())
            assert answer['status'] == 'success', answer
            return {tuple(sorted(r['metric'].items())): float(r['value'][1])
                    for r in answer['data']['result']}
        return query

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(20)


def eventually(query, promql, want, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        got = query(promql)
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


@pytest.mark.skipif(not shutil.which('prometheus'), reason='Debian package prometheus '
                    'is not installed (tools/run-tests installs it)')
def test_prometheus_scrapes_the_attaches_the_worker_made(make_worker, controller, volumes,
                                                         sessions, admin_cinder, prometheus):
    port = free_port()
    worker = make_worker(metrics__port=port)
    query = prometheus(port)
    ctl = controller(worker)
    ids = volumes.make(3)
    requests = []
    for vid in ids:
        ctxt = caller_context(sessions['demo'])
        ctl.api.attach_volume(ctxt, worker.host, {'uuid': str(uuid.uuid4()),
                                                  'project_id': ctxt.project_id},
                              vid, None)
        requests.append(ctxt.request_id)
    # and one that fails: a volume that does not exist
    bad = caller_context(sessions['demo'])
    ctl.api.attach_volume(bad, worker.host, {'uuid': str(uuid.uuid4()),
                                             'project_id': bad.project_id},
                          str(uuid.uuid4()), None)
    seen = ctl.outcomes(requests + [bad.request_id], 90)
    assert [seen[r][-1].rsplit('.', 1)[1] for r in requests] == ['end'] * 3, seen
    assert seen[bad.request_id][-1].endswith('.error')
    assert {admin_cinder.volumes.get(v).status for v in ids} == {'in-use'}

    ops = eventually(query, 'attachworker_operations_total', {
        (('action', 'volume_attach'), ('instance', '127.0.0.1:%d' % port),
         ('job', 'attachworker'), ('outcome', 'success')): 3.0,
        (('action', 'volume_attach'), ('instance', '127.0.0.1:%d' % port),
         ('job', 'attachworker'), ('outcome', 'error')): 1.0})
    print('prometheus: attachworker_operations_total =',
          {dict(k)['outcome']: v for k, v in ops.items()})
    assert sorted(dict(k)['outcome'] for k in ops) == ['error', 'success'], ops
    assert sum(v for k, v in ops.items() if dict(k)['outcome'] == 'success') == 3
    assert sum(v for k, v in ops.items() if dict(k)['outcome'] == 'error') == 1

    # Cinder's answers, as the real Cinder gave them: one GET 404 for the unknown volume,
    # one attachment_update and one attachment_complete per attach
    calls = {(dict(k)['call'], dict(k)['status']): v for k, v in
             query('attachworker_cinder_requests_total').items()}
    assert calls.get(('get_volume', '404')) == 1, calls
    assert calls.get(('attachment_update', '200')) == 3, calls
    assert sum(v for (call, status), v in calls.items()
               if call == 'attachment_complete' and status.startswith('2')) == 3, calls
    steps = {dict(k)['step']: v for k, v in
             query('attachworker_step_duration_seconds_count'
                   '{action="volume_attach"}').items()}
    assert steps.get('driver_attach') == 3, steps
    assert query('attachworker_operations_in_flight') and all(
        v == 0 for v in query('attachworker_operations_in_flight').values())
    assert list(query('attachworker_journal_orphans').values()) == [0.0]
    assert list(query('attachworker_outbox_backlog').values()) == [0.0]

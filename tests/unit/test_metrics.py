"""Prometheus metrics: what is counted, by which labels, and the endpoint.

The registry is the process's own (attachworker.metrics.REGISTRY), so every test
measures the change its own work made.
"""
import re
import socket
import urllib.request

import pytest

from attachworker import exception
from attachworker import metrics
from attachworker.worker.journal import Journal
from attachworker.worker.operation import Operation

INSTANCE = {'uuid': '8f0e3c4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b', 'project_id': 'p1',
            'user_id': 'u1'}
UUID_RE = re.compile(r'[0-9a-f]{8}-[0-9a-f]{4}-')


def value(name, **labels):
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


class Delta:
    """The change of some samples between construction and ``__call__``."""

    def __init__(self, *samples):
        self._samples = samples
        self._before = [value(name, **labels) for name, labels in samples]

    def __call__(self):
        return [value(name, **labels) - before
                for (name, labels), before in zip(self._samples, self._before, strict=True)]


def ops(action, outcome):
    return ('attachworker_operations_total', {'action': action, 'outcome': outcome})


def cinder(call, status):
    return ('attachworker_cinder_requests_total', {'call': call, 'status': status})


def step_count(step, action='volume_attach'):
    return ('attachworker_step_duration_seconds_count', {'action': action, 'step': step})


def test_a_successful_attach_counts_one_success_its_steps_and_cinder_calls(
        make_manager, cinder_mock, ctxt):
    delta = Delta(ops('volume_attach', 'success'), ops('volume_attach', 'error'),
                  step_count('get_volume'), step_count('attachment_update'),
                  step_count('driver_attach'), cinder('get_volume', '200'),
                  cinder('attachment_create', '200'), cinder('attachment_update', '200'),
                  cinder('attachment_complete', '204'))
    make_manager().attach_volume(ctxt, INSTANCE, cinder_mock.volume_id, '/dev/vdb')
    assert delta() == [1, 0, 1, 1, 1, 1, 1, 1, 1]
    assert value('attachworker_operations_in_flight', action='volume_attach') == 0


def test_a_failed_attach_counts_an_error_and_the_status_cinder_answered(
        make_manager, cinder_mock, ctxt):
    cinder_mock.fail('PUT', '/attachments/' + cinder_mock.attachment_id, 500)
    delta = Delta(ops('volume_attach', 'error'), ops('volume_attach', 'success'),
                  cinder('attachment_update', '500'), cinder('attachment_delete', '200'),
                  step_count('attachment_update'))
    make_manager().attach_volume(ctxt, INSTANCE, cinder_mock.volume_id, '/dev/vdb')
    assert delta() == [1, 0, 1, 1, 1]


def test_every_answer_of_a_retried_call_is_counted(make_manager, cinder_mock, ctxt):
    # GET is idempotent: a 500 is retried ([cinder] http_retries = 1), then it fails
    cinder_mock.fail('GET', '/volumes/' + cinder_mock.volume_id, 500)
    delta = Delta(cinder('get_volume', '500'), ops('volume_attach', 'error'))
    make_manager().attach_volume(ctxt, INSTANCE, cinder_mock.volume_id, '/dev/vdb')
    assert delta() == [2, 1]


def test_a_call_that_got_no_answer_is_counted_as_such(make_manager, cinder_mock, ctxt):
    import requests

    cinder_mock.m.post(cinder_mock.base + '/attachments',
                       exc=requests.exceptions.ConnectionError)
    delta = Delta(cinder('attachment_create', 'connection_error'),
                  ops('volume_attach', 'error'))
    make_manager().attach_volume(ctxt, INSTANCE, cinder_mock.volume_id, '/dev/vdb')
    assert delta() == [1, 1]


def test_labels_never_carry_an_id(make_manager, cinder_mock, ctxt):
    make_manager().attach_volume(ctxt, INSTANCE, cinder_mock.volume_id, '/dev/vdb')
    make_manager().detach_volume(ctxt, INSTANCE, cinder_mock.volume_id)
    for family in metrics.REGISTRY.collect():
        assert family.name.startswith(('attachworker_', 'process_'))
        for sample in family.samples:
            for label in sample.labels.values():
                assert not UUID_RE.search(label), (sample.name, sample.labels)
                assert cinder_mock.volume_id not in label


def test_step_durations_are_observed_for_failed_steps_too():
    op = Operation('volume_attach', 'req-1', 'host-1')
    delta = Delta(step_count('driver_attach'))

    def boom():
        raise exception.VirtDriverError(reason='x')

    with pytest.raises(exception.VirtDriverError):
        op.step('driver_attach', boom)
    assert delta() == [1]


def test_journal_gauges_show_orphans_and_the_outbox_backlog(tmp_path):
    dead = Journal(str(tmp_path), owner='999999:1')  # no such process: its work is orphaned
    op = Operation('volume_attach', 'req-1', 'h')
    dead.begin(op, {})
    dead.queue_notification('volume_attach', 'start', {'request_id': 'req-1'}, None, {})
    dead.close()  # its owner lock goes with it, as with a killed process
    journal = Journal(str(tmp_path), owner='1:1')
    metrics.watch_journal(journal)
    try:
        assert value('attachworker_journal_orphans') == 1
        assert value('attachworker_outbox_backlog') == 1
        assert value('attachworker_outbox_parked') == 0
        journal.finish(op.id, 'undone')
        assert value('attachworker_journal_orphans') == 0
    finally:
        metrics.watch_journal(None)
    assert metrics.REGISTRY.get_sample_value('attachworker_journal_orphans') is None


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_port_0_serves_nothing(conf):
    assert metrics.serve(conf, 'test') is None


def test_the_endpoint_serves_the_metrics(conf):
    port = free_port()
    conf.set_override('port', port, group='metrics')
    server = metrics.serve(conf, 'test')
    try:
        body = urllib.request.urlopen('http://127.0.0.1:%d/metrics' % port,
                                      timeout=5).read().decode()
    finally:
        server.shutdown()
    assert '# TYPE attachworker_operations_total counter' in body
    assert 'attachworker_step_duration_seconds_bucket' in body or \
        '# TYPE attachworker_step_duration_seconds histogram' in body


def test_a_port_in_use_is_a_clear_error(conf):
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        conf.set_override('port', taken.getsockname()[1], group='metrics')
        with pytest.raises(exception.MetricsUnavailable, match=r'\[metrics\] host and port'):
            metrics.serve(conf, 'test')


def test_the_readme_explains_every_metric():
    import pathlib
    readme = (pathlib.Path(__file__).parents[2] / 'README.rst').read_text()
    names = {family.name for family in metrics.REGISTRY.collect()
             if family.name.startswith('attachworker_')}
    names |= {'attachworker_journal_orphans', 'attachworker_journal_undo_failed',
              'attachworker_outbox_backlog', 'attachworker_outbox_parked'}
    missing = sorted(n for n in names if n not in readme)
    assert not missing, missing

"""``[worker] workers = N``: the main process serves its children's per-cast metrics
(attachworker.worker.child_metrics), summed with its own, and they never go back."""
from prometheus_client import CollectorRegistry
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from attachworker import metrics
from attachworker.worker import child_metrics

ATTACH_OK = ('attachworker_operations', 'counter', 'attachworker_operations_total',
             (('action', 'volume_attach'), ('outcome', 'success')))
DETACH_ERR = ('attachworker_operations', 'counter', 'attachworker_operations_total',
              (('action', 'volume_detach'), ('outcome', 'error')))
IN_FLIGHT = ('attachworker_operations_in_flight', 'gauge',
             'attachworker_operations_in_flight', (('action', 'volume_attach'),))


def step(sample, value, le=None):
    labels = [('action', 'volume_attach'), ('step', 'get_volume')]
    if le is not None:
        labels.append(('le', le))
    return ('attachworker_step_duration_seconds', 'histogram',
            'attachworker_step_duration_seconds_' + sample, tuple(sorted(labels)), value)


def served(collector):
    """{(sample, labels): value} as a scraper parses the exposition."""
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def own(key):
    return metrics.REGISTRY.get_sample_value(key[2], dict(key[3])) or 0.0


def test_children_samples_are_added_to_the_main_process_own():
    collector = child_metrics.ChildrenCollector()
    base = own(ATTACH_OK)
    collector.update(0, [ATTACH_OK + (3.0,), IN_FLIGHT + (2.0,)])
    collector.update(1, [ATTACH_OK + (4.0,), DETACH_ERR + (1.0,), IN_FLIGHT + (1.0,)])
    out = served(collector)
    assert out[(ATTACH_OK[2], ATTACH_OK[3])] == base + 7
    assert out[(DETACH_ERR[2], DETACH_ERR[3])] == own(DETACH_ERR) + 1  # a child's only
    assert out[(IN_FLIGHT[2], IN_FLIGHT[3])] == own(IN_FLIGHT) + 3
    collector.update(1, [ATTACH_OK + (5.0,)])            # a snapshot replaces the last one
    assert served(collector)[(ATTACH_OK[2], ATTACH_OK[3])] == base + 8


def test_histograms_merge_bucket_by_bucket_in_a_valid_exposition():
    collector = child_metrics.ChildrenCollector()
    key = ('attachworker_step_duration_seconds_bucket',
           (('action', 'volume_attach'), ('le', '0.005'), ('step', 'get_volume')))
    inf = (key[0], (('action', 'volume_attach'), ('le', '+Inf'), ('step', 'get_volume')))
    before = served(child_metrics.ChildrenCollector())
    collector.update(0, [step('bucket', 1.0, '0.005'), step('bucket', 2.0, '+Inf'),
                         step('count', 2.0), step('sum', 0.3)])
    collector.update(1, [step('bucket', 0.0, '0.005'), step('bucket', 1.0, '+Inf'),
                         step('count', 1.0), step('sum', 0.2)])
    out = served(collector)                               # parsed back: a valid exposition
    assert out[key] == before.get(key, 0) + 1
    assert out[inf] == before.get(inf, 0) + 3


def test_an_ended_child_keeps_its_counts_and_loses_its_gauges():
    collector = child_metrics.ChildrenCollector()
    base, flight = own(ATTACH_OK), own(IN_FLIGHT)
    collector.update(0, [ATTACH_OK + (10.0,), IN_FLIGHT + (2.0,)])
    collector.retire(0)
    collector.update(0, [ATTACH_OK + (1.0,), IN_FLIGHT + (1.0,)])   # its successor
    out = served(collector)
    assert out[(ATTACH_OK[2], ATTACH_OK[3])] == base + 11         # never goes back
    assert out[(IN_FLIGHT[2], IN_FLIGHT[3])] == flight + 1         # the successor's only


def test_a_malformed_entry_is_skipped_not_a_broken_scrape():
    collector = child_metrics.ChildrenCollector()
    base = own(ATTACH_OK)
    collector.update(0, [ATTACH_OK + (2.0,), ('x',), ATTACH_OK + ('many',),
                         DETACH_ERR + (float('nan'),), None])
    assert served(collector)[(ATTACH_OK[2], ATTACH_OK[3])] == base + 2


def test_a_snapshot_holds_every_per_cast_metric_and_no_timestamps():
    metrics.OPERATIONS.labels('volume_attach', 'success').inc()
    metrics.STEP_SECONDS.labels('volume_attach', 'get_volume').observe(0.01)
    entries = child_metrics.snapshot()
    families = {e[0] for e in entries}
    assert {'attachworker_operations', 'attachworker_step_duration_seconds'} <= families
    assert not [e for e in entries if e[2].endswith('_created')]
    assert (ATTACH_OK[2], ATTACH_OK[3]) in {(e[2], e[3]) for e in entries}

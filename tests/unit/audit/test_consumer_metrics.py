"""The audit consumer's Prometheus metrics: each fate of a message, and the lag."""
import datetime

from attachworker import metrics
from attachworker.audit import contract
from tests.unit.audit.helpers import notification


def value(name, **labels):
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_the_audit_consumer_counts_each_fate_and_the_lag(endpoint):
    names = [('attachworker_audit_messages_total', {'result': 'stored'}),
             ('attachworker_audit_messages_total', {'result': 'duplicate'}),
             ('attachworker_audit_messages_total', {'result': 'rejected'}),
             ('attachworker_audit_lag_seconds_count', {}),
             ('attachworker_audit_lag_seconds_sum', {})]
    before = [value(n, **labels) for n, labels in names]
    published = datetime.datetime.utcnow() - datetime.timedelta(seconds=30)
    ctxt, msg = notification('attach', 'end', at=published)
    endpoint.handle(ctxt, msg)
    endpoint.handle(ctxt, dict(msg))
    bad_ctxt, bad = notification('attach', 'start')
    bad['payload'][contract.PREFIX + 'version'] = '2.0'
    endpoint.handle(bad_ctxt, bad)
    stored, duplicate, rejected, lags, lag_sum = [
        value(n, **labels) - b for (n, labels), b in zip(names, before, strict=True)]
    assert (stored, duplicate, rejected, lags) == (1, 1, 1, 1)
    assert 29 <= lag_sum < 120

"""Prometheus metrics of attachworker-compute and attachworker-audit.

Every metric is defined here, once, in the registry the endpoint serves
(``[metrics] port``; off by default). Labels take values from short fixed sets only
(actions, step names, Cinder calls, HTTP status codes, outcomes): never a volume,
instance or request id, so the number of series stays bounded whatever the load.

The README's "Metrics" section lists them with their meaning; a test checks that it
names every metric defined here.
"""
import threading
from typing import Any
from typing import Optional

from oslo_log import log as logging
from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Gauge
from prometheus_client import Histogram
from prometheus_client import ProcessCollector
from prometheus_client import start_http_server
from prometheus_client.core import GaugeMetricFamily

from attachworker import exception

LOG = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # process_cpu_seconds_total, resident memory...

#: From a fast Cinder call (a few ms) to an attach that waits for a slow backend.
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
           120.0)

OPERATIONS = Counter(
    'attachworker_operations', 'Operations answered, by action (volume_attach, '
    'volume_detach, volume_extend, volume_refresh) and outcome: success (an .end '
    'notification) or error (an .error notification).',
    ['action', 'outcome'], registry=REGISTRY)
IN_FLIGHT = Gauge(
    'attachworker_operations_in_flight', 'Operations being carried out now, by action.',
    ['action'], registry=REGISTRY)
STEP_SECONDS = Histogram(
    'attachworker_step_duration_seconds', 'Time each pipeline step took, successful or '
    'not, by action and step (get_volume, attachment_update, driver_attach, ...).',
    ['action', 'step'], buckets=SECONDS, registry=REGISTRY)
CINDER_REQUESTS = Counter(
    'attachworker_cinder_requests', 'HTTP requests to Cinder, by call and status: the '
    'HTTP status code, or timeout / connection_error when no answer came.',
    ['call', 'status'], registry=REGISTRY)
CINDER_SECONDS = Histogram(
    'attachworker_cinder_request_duration_seconds', 'Time until Cinder answered, by call.',
    ['call'], buckets=SECONDS, registry=REGISTRY)
RECOVERED = Counter(
    'attachworker_recovered_operations', 'Operations of dead workers that recovery '
    'resolved, by result: completed, undone, undo_failed (retried later), retry (it '
    'could not reach a decision this round).', ['result'], registry=REGISTRY)

AUDIT_MESSAGES = Counter(
    'attachworker_audit_messages', 'Notifications the audit consumer handled, by result: '
    'stored, duplicate (already stored, acknowledged), rejected (kept aside in the '
    'rejected table), requeued (the store was unavailable).', ['result'],
    registry=REGISTRY)
AUDIT_LAG = Histogram(
    'attachworker_audit_lag_seconds', 'Consumer lag: from the timestamp a notification was '
    'published with to the moment it was stored.',
    buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0),
    registry=REGISTRY)

#: What a cast changes: counted in the process that runs it (with ``[worker] workers
#: = N``, a child: attachworker.worker.child_metrics brings them to the main process).
PER_CAST = (OPERATIONS, IN_FLIGHT, STEP_SECONDS, CINDER_REQUESTS, CINDER_SECONDS,
            RECOVERED)

_calls = threading.local()


def count_outcome(action: str, phase: str) -> None:
    """The one rule: a cast's terminal notification is its outcome."""
    if phase in ('end', 'error'):
        OPERATIONS.labels(action, 'success' if phase == 'end' else 'error').inc()


# --- Cinder -------------------------------------------------------------------------------
class cinder_call:
    """``with cinder_call('attachment_update', endpoint):`` names the HTTP requests made
    inside, for the response hook (:func:`instrument_session`)."""

    def __init__(self, call: str, endpoint: Optional[str]) -> None:
        self._current = (call, endpoint or '')

    def __enter__(self) -> None:
        self._previous = getattr(_calls, 'current', None)
        _calls.current = self._current

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        _calls.current = self._previous


def no_answer(call: str, timed_out: bool) -> None:
    """A Cinder request that got no HTTP answer at all."""
    CINDER_REQUESTS.labels(call, 'timeout' if timed_out else 'connection_error').inc()


def _response(response: Any, *args: Any, **kwargs: Any) -> None:
    current = getattr(_calls, 'current', None)
    if current is None or not str(response.url).startswith(current[1]):
        return  # not a Cinder call of ours (a Keystone token, the version probe)
    CINDER_REQUESTS.labels(current[0], str(response.status_code)).inc()
    CINDER_SECONDS.labels(current[0]).observe(response.elapsed.total_seconds())


def instrument_session(session: Any) -> None:
    """Count every HTTP answer of a keystoneauth1 Session (retries included)."""
    hooks = session.session.hooks.setdefault('response', [])
    if _response not in hooks:
        hooks.append(_response)


# --- the journal, read when Prometheus scrapes ---------------------------------------
class _JournalCollector:
    def __init__(self) -> None:
        self.journal: Any = None

    def describe(self) -> list:
        return []  # collected only when a journal is set

    def collect(self) -> list:
        journal = self.journal
        if journal is None:
            return []
        try:
            backlog, parked = journal.outbox_counts()
            orphans, undo_failed = journal.unfinished_counts()
        except exception.JournalError as exc:
            LOG.warning('Metrics: cannot read the journal: %s', exc)
            return []
        return [
            _gauge('attachworker_journal_orphans', 'Unfinished operations whose worker '
                   'died; recovery resolves them at its next round.', orphans),
            _gauge('attachworker_journal_undo_failed', 'Operations whose undo failed and '
                   'is retried at every recovery round (a volume may need a look).',
                   undo_failed),
            _gauge('attachworker_outbox_backlog', 'Notifications journalled and not yet '
                   'published (the bus was unreachable).', backlog),
            _gauge('attachworker_outbox_parked', 'Notifications the bus refused three '
                   'times, kept aside (attachworker-manage journal list).', parked),
        ]


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


_JOURNAL = _JournalCollector()
REGISTRY.register(_JOURNAL)


def watch_journal(journal: Any) -> None:
    """Report this journal's orphans and outbox backlog at every scrape."""
    _JOURNAL.journal = journal


# --- the endpoint ---------------------------------------------------------------------
def serve(conf: Any, service: str) -> Optional[Any]:
    """Serve ``/metrics`` on ``[metrics] host``:``port`` (None when the port is 0)."""
    port, host = conf.metrics.port, conf.metrics.host
    if not port:
        return None
    try:
        server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    except OSError as exc:
        raise exception.MetricsUnavailable(host=host, port=port, reason=exc) from exc
    LOG.info('%s serves Prometheus metrics on http://%s:%d/metrics', service,
             '[%s]' % host if ':' in host else host, port)
    return server

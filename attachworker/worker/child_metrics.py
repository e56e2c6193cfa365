"""The per-cast metrics of ``[worker] workers = N``: counted where the casts run (the
children), served by the main process (the only one with ``[metrics] port``).

Each child sends the main process a snapshot of its per-cast metrics
(attachworker.metrics.PER_CAST) every SNAPSHOT_INTERVAL seconds in which it ran
something, and a last one when it stops; for each of them the main process serves
its own samples plus its children's. A child that ends leaves its counters and
histograms behind (its last snapshot), so the sums never go back when a successor
starts from zero; its gauges go with it. A child killed with -9 loses what it counted
after its last snapshot (at most SNAPSHOT_INTERVAL's worth). ``process_*`` stay the
main process's own.
"""
import collections
import math
import threading
from typing import Any
from typing import Iterator

from prometheus_client.metrics_core import Metric

from attachworker import metrics

SNAPSHOT_INTERVAL = 1.0


def snapshot() -> list:
    """This process's per-cast samples: [(family, type, sample, labels, value)]."""
    out = []
    for metric in metrics.PER_CAST:
        for family in metric.collect():
            for sample in family.samples:
                if not sample.name.endswith('_created'):  # a timestamp: never summed
                    out.append((family.name, family.type, sample.name,
                                tuple(sorted(sample.labels.items())), sample.value))
    return out


def _key(entry: Any) -> tuple:
    """(family, type, sample, labels) and the value of one snapshot entry, checked."""
    family, typ, name, labels, value = entry
    labels = tuple((str(k), str(v)) for k, v in labels)
    value = float(value)
    if not all(isinstance(x, str) for x in (family, typ, name)) or math.isnan(value):
        raise ValueError(entry)
    return (family, typ, name, labels), value


def _order(item: tuple) -> tuple:
    """Samples of a series together, histogram buckets by ``le``."""
    (_family, _typ, name, labels), _value = item
    le = dict(labels).get('le')
    return (tuple(kv for kv in labels if kv[0] != 'le'), name,
            float(le) if le is not None else 0.0)


class ChildrenCollector:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict = {}                          # slot index -> {key: value}
        self._retired: collections.Counter = collections.Counter()

    def update(self, index: int, entries: Any) -> None:
        values = {}
        for entry in entries:
            try:
                key, value = _key(entry)
            except (TypeError, ValueError):
                continue  # our own child's, yet never trusted to break a scrape
            values[key] = value
        with self._lock:
            self._live[index] = values

    def retire(self, index: int) -> None:
        """The child of slot ``index`` ended: keep what its counters had counted."""
        with self._lock:
            for key, value in self._live.pop(index, {}).items():
                if key[1] != 'gauge':
                    self._retired[key] += value

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            extra = collections.Counter(self._retired)
            for values in self._live.values():
                extra.update(values)
        by_family: dict = collections.defaultdict(dict)
        for key, value in extra.items():
            by_family[key[0]][key] = value
        for metric in metrics.PER_CAST:
            for family in metric.collect():
                merged = Metric(family.name, family.documentation, family.type,
                                family.unit)
                values = dict(by_family.get(family.name, {}))
                for sample in family.samples:
                    if sample.name.endswith('_created'):
                        continue
                    key = (family.name, family.type, sample.name,
                           tuple(sorted(sample.labels.items())))
                    values[key] = values.get(key, 0.0) + sample.value
                for (_f, _t, name, labels), value in sorted(values.items(), key=_order):
                    merged.add_sample(name, dict(labels), value)
                yield merged


COLLECTOR = ChildrenCollector()


def serve_merged() -> None:
    """In the main process of workers > 1: its endpoint serves the children's too."""
    for metric in metrics.PER_CAST:
        metrics.REGISTRY.unregister(metric)
    metrics.REGISTRY.register(COLLECTOR)

"""Reading the audit store: what ``list``, ``show`` and ``stats`` print.

Each function returns plain dicts (datetimes as naive UTC), so formatting is
someone else's job and tests can read the answers directly.
"""
import dataclasses
import datetime
import json
import math
import re
from typing import Optional

import sqlalchemy as sa

from attachworker.audit import models
from attachworker.exception import OperationNotFound

_RELATIVE = re.compile(r'^(\d+)\s*([smhdw])$')
_UNITS = {'s': 'seconds', 'm': 'minutes', 'h': 'hours', 'd': 'days', 'w': 'weeks'}


def parse_time(text: str, now: Optional[datetime.datetime] = None) -> datetime.datetime:
    """ISO 8601 (``2026-11-25``, ``2026-11-25T10:00Z``) or an age (``90m``, ``7d``)."""
    now = now or datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    relative = _RELATIVE.match(text.strip().lower())
    if relative:
        return now - datetime.timedelta(**{_UNITS[relative[2]]: int(relative[1])})
    parsed = datetime.datetime.fromisoformat(text.strip())
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return parsed


@dataclasses.dataclass
class Filters:
    """Operation filters; ``since``/``until`` bound the start (or the end if unknown)."""

    volume_id: Optional[str] = None
    instance_uuid: Optional[str] = None
    host: Optional[str] = None
    project_id: Optional[str] = None
    outcome: Optional[str] = None
    action: Optional[str] = None
    since: Optional[datetime.datetime] = None
    until: Optional[datetime.datetime] = None

    def clauses(self) -> list:
        ops = models.operations
        clauses = [ops.c[name] == value for name, value in (
            ('volume_id', self.volume_id), ('instance_uuid', self.instance_uuid),
            ('host', self.host), ('project_id', self.project_id),
            ('outcome', self.outcome), ('action', self.action)) if value is not None]
        if self.since is not None:
            clauses.append(when() >= self.since)
        if self.until is not None:
            clauses.append(when() <= self.until)
        return clauses


def when():
    ops = models.operations
    return sa.func.coalesce(ops.c.started_at, ops.c.ended_at)


def list_operations(engine: sa.engine.Engine, filters: Filters,
                    limit: Optional[int] = None) -> list:
    """Matching operations, oldest first; with ``limit``, the newest ``limit``."""
    ops = models.operations
    stmt = sa.select(ops).where(*filters.clauses())
    with engine.connect() as conn:
        if limit:
            stmt = stmt.order_by(when().desc(), ops.c.request_id.desc()).limit(limit)
            return [dict(row) for row in reversed(conn.execute(stmt).mappings().all())]
        stmt = stmt.order_by(when(), ops.c.request_id)
        return [dict(row) for row in conn.execute(stmt).mappings()]


def get_operation(engine: sa.engine.Engine, request_id: str) -> dict:
    """One operation with its events in time order; OperationNotFound if unknown."""
    ops, events = models.operations, models.events
    with engine.connect() as conn:
        row = conn.execute(sa.select(ops).where(ops.c.request_id == request_id)).first()
        if row is None:
            raise OperationNotFound(request_id=request_id)
        timeline = conn.execute(sa.select(events).where(events.c.request_id == request_id)
                                .order_by(events.c.timestamp, events.c.id)).mappings()
        operation = dict(row._mapping)
        operation['events'] = [_event(dict(event)) for event in timeline]
    return operation


def _event(row: dict) -> dict:
    row.pop('id', None)
    for key in ('payload', 'context'):
        row[key] = json.loads(row[key]) if row.get(key) else None
    return row


def percentile(ordered: list, fraction: float) -> Optional[int]:
    """Nearest-rank percentile of an ascending list (None if empty)."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def stats(engine: sa.engine.Engine, filters: Filters, open_timeout: float,
          now: Optional[datetime.datetime] = None) -> dict:
    """Counts by outcome and host, duration percentiles, operations still open."""
    ops = models.operations
    now = now or datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    where = filters.clauses()
    with engine.connect() as conn:
        by_outcome = dict(conn.execute(sa.select(ops.c.outcome, sa.func.count())
                                       .where(*where).group_by(ops.c.outcome)).all())
        by_host: dict = {}
        for host, outcome, count in conn.execute(
                sa.select(ops.c.host, ops.c.outcome, sa.func.count()).where(*where)
                .group_by(ops.c.host, ops.c.outcome)):
            by_host.setdefault(host, dict.fromkeys(models.OPERATION_OUTCOMES, 0))[outcome] = count
        durations = list(conn.execute(
            sa.select(ops.c.duration_ms).where(*where, ops.c.duration_ms.is_not(None),
                                               ops.c.outcome != 'pending')
            .order_by(ops.c.duration_ms)).scalars())
        cutoff = now - datetime.timedelta(seconds=open_timeout)
        still_open = [dict(row) for row in conn.execute(
            sa.select(ops).where(*where, ops.c.outcome == 'pending',
                                 ops.c.started_at <= cutoff)
            .order_by(ops.c.started_at)).mappings()]
        rejected = conn.execute(sa.select(sa.func.count()).select_from(models.rejected)
                                ).scalar_one()
    return {
        'operations': sum(by_outcome.values()),
        'by_outcome': {name: by_outcome.get(name, 0) for name in models.OPERATION_OUTCOMES},
        'by_host': {host: dict(counts, total=sum(counts.values()))
                    for host, counts in sorted(by_host.items(), key=lambda i: str(i[0]))},
        'duration_ms': {'count': len(durations), 'p50': percentile(durations, 0.50),
                        'p95': percentile(durations, 0.95),
                        'max': durations[-1] if durations else None},
        'open_timeout': open_timeout,
        'open': [dict(row, age_s=round((now - row['started_at']).total_seconds()))
                 for row in still_open],
        'rejected_messages': rejected,
    }

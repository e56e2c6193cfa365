"""Rendering query answers: aligned tables for people, JSON for programs.

Times are UTC: tables show ``YYYY-MM-DD HH:MM:SS.mmm`` and say UTC in the
header; JSON gives ISO 8601 with a ``Z``. An empty value is ``-`` in tables and
``null`` in JSON.
"""
import datetime
import json
from typing import Any
from typing import Iterable

import prettytable

LIST_COLUMNS = (('Request ID', 'request_id'), ('Action', 'action'),
                ('Outcome', 'outcome'), ('Started (UTC)', 'started_at'),
                ('Duration ms', 'duration_ms'), ('Volume', 'volume_id'),
                ('Instance', 'instance_uuid'), ('Host', 'host'),
                ('Project', 'project_id'), ('Fault', 'fault'))
DETAIL_FIELDS = ('request_id', 'action', 'outcome', 'started_at', 'ended_at',
                 'duration_ms', 'volume_id', 'instance_uuid', 'host', 'project_id',
                 'user_id', 'attachment_id', 'mountpoint', 'mode', 'flow',
                 'driver_volume_type', 'fault_exception', 'fault_step', 'fault_code',
                 'fault_message', 'events_count')
TIMELINE_COLUMNS = (('Time (UTC)', 'timestamp'), ('Event', 'event_type'),
                    ('Priority', 'priority'), ('Publisher', 'publisher_id'),
                    ('Duration ms', 'duration_ms'), ('Fault', 'fault'),
                    ('Message ID', 'message_id'))
NUMERIC = {'Duration ms', 'Count', 'Total', 'pending', 'success', 'error', 'Age s',
           'p50', 'p95', 'Max'}


def cell(value: Any) -> str:
    if value is None or value == '':
        return '-'
    if isinstance(value, datetime.datetime):
        return value.strftime('%Y-%m-%d %H:%M:%S.') + '%03d' % (value.microsecond // 1000)
    return str(value)


def fault_summary(row: dict) -> str | None:
    if not row.get('fault_exception') and not row.get('fault_step'):
        return None
    return '%s at %s' % (row.get('fault_exception') or '?', row.get('fault_step') or '?')


def table(columns: Iterable, rows: Iterable[dict]) -> str:
    """An aligned table: text left, numbers right."""
    columns = list(columns)
    out = prettytable.PrettyTable([title for title, _ in columns])
    for title, _ in columns:
        out.align[title] = 'r' if title in NUMERIC else 'l'
    for row in rows:
        out.add_row([cell(row.get(key)) for _, key in columns])
    return out.get_string()


def operations(rows: list) -> str:
    rows = [dict(row, fault=fault_summary(row)) for row in rows]
    return '%s\n%d operation(s)' % (table(LIST_COLUMNS, rows), len(rows))


def operation(op: dict) -> str:
    details = table((('Field', 'field'), ('Value', 'value')),
                    ({'field': key, 'value': op.get(key)} for key in DETAIL_FIELDS))
    events = [dict(event, fault=fault_summary(event)) for event in op['events']]
    return '%s\n\nTimeline:\n%s' % (details, table(TIMELINE_COLUMNS, events))


def stats(result: dict) -> str:
    outcome = table((('Outcome', 'outcome'), ('Count', 'count')),
                    ({'outcome': name, 'count': count}
                     for name, count in result['by_outcome'].items()))
    hosts = table((('Host', 'host'), ('Total', 'total'), ('success', 'success'),
                   ('error', 'error'), ('pending', 'pending')),
                  (dict(counts, host=host) for host, counts in result['by_host'].items()))
    duration = table((('Count', 'count'), ('p50', 'p50'), ('p95', 'p95'), ('Max', 'max')),
                     [result['duration_ms']])
    still_open = table((('Request ID', 'request_id'), ('Action', 'action'),
                        ('Started (UTC)', 'started_at'), ('Age s', 'age_s'),
                        ('Volume', 'volume_id'), ('Instance', 'instance_uuid'),
                        ('Host', 'host')), result['open'])
    return '\n'.join((
        'Operations: %d   Rejected messages: %d' % (result['operations'],
                                                     result['rejected_messages']),
        '', 'By outcome:', outcome, '', 'By host:', hosts,
        '', 'Duration of finished operations (ms):', duration,
        '', 'Open (started more than %ss ago, no end): %d' % (
            _number(result['open_timeout']), len(result['open'])), still_open))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _default(value: Any) -> str:
    if isinstance(value, datetime.datetime):
        return value.isoformat(timespec='microseconds') + 'Z'
    return str(value)


def to_json(data: Any) -> str:
    return json.dumps(data, default=_default, indent=2, sort_keys=True)

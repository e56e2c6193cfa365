"""Tables an auditor reads are aligned; JSON is parseable and says UTC."""
import datetime
import json

from attachworker.audit import formatting

ROW = {'request_id': 'req-1', 'action': 'attach', 'outcome': 'error',
       'started_at': datetime.datetime(2026, 11, 25, 10, 0, 0, 123456),
       'duration_ms': 412, 'volume_id': 'vol-1', 'instance_uuid': 'inst-1',
       'host': 'compute-1', 'project_id': None, 'fault_exception': 'CinderUnavailable',
       'fault_step': 'attachment_update'}


def test_operation_table_is_aligned_and_readable():
    text = formatting.operations([ROW, dict(ROW, request_id='req-22222', duration_ms=7,
                                            fault_exception=None, fault_step=None)])
    lines = text.splitlines()
    table_lines, footer = lines[:-1], lines[-1]
    assert len({len(line) for line in table_lines}) == 1   # every row the same width
    assert footer == '2 operation(s)'
    assert '2026-11-25 10:00:00.123' in text
    assert 'CinderUnavailable at attachment_update' in text
    first, second = table_lines[3], table_lines[4]
    # numbers right-aligned: the units digit sits in the same column
    assert first.index('412 |') + 2 == second.index('7 |')
    assert '| -' in first  # an empty project shows as "-"


def test_json_gives_iso_utc_times():
    data = json.loads(formatting.to_json([ROW]))
    assert data[0]['started_at'] == '2026-11-25T10:00:00.123456Z'
    assert data[0]['project_id'] is None


def test_stats_text_names_every_section():
    result = {'operations': 1, 'rejected_messages': 2,
              'by_outcome': {'pending': 1, 'success': 0, 'error': 0},
              'by_host': {'compute-1': {'pending': 1, 'success': 0, 'error': 0,
                                        'total': 1}},
              'duration_ms': {'count': 0, 'p50': None, 'p95': None, 'max': None},
              'open_timeout': 600.0, 'open': [dict(ROW, age_s=900)]}
    text = formatting.stats(result)
    for heading in ('Operations: 1   Rejected messages: 2', 'By outcome:', 'By host:',
                    'Duration of finished operations (ms):',
                    'Open (started more than 600s ago, no end): 1'):
        assert heading in text

"""Reading a notification: the contract is checked before any field is used."""
import datetime
import json

import pytest

from attachworker.audit import contract
from attachworker.audit import masking
from attachworker.audit import testing
from attachworker.exception import MalformedNotification
from tests.unit.audit.helpers import T0
from tests.unit.audit.helpers import notification

PREFIX = contract.PREFIX


def parse(ctxt, msg, max_size=64 * 1024):
    return contract.parse(ctxt, msg, T0, max_size)


@pytest.mark.parametrize('action', ['attach', 'detach'])
@pytest.mark.parametrize('phase,outcome', [('start', 'pending'), ('end', 'success'),
                                           ('error', 'error')])
def test_each_event_type_becomes_an_event_row(action, phase, outcome):
    ctxt, msg = notification(action, phase, request_id='req-1', host='compute-7',
                             volume_id='vol-1', at=T0)
    event = parse(ctxt, msg)
    assert (event.action, event.outcome, event.request_id) == (action, outcome, 'req-1')
    assert (event.host, event.volume_id) == ('compute-7', 'vol-1')
    assert event.priority == ('error' if phase == 'error' else 'info')
    assert event.publisher_id == 'attachworker-compute:compute-1'
    assert event.timestamp == T0
    assert event.duration_ms == (None if phase == 'start' else 412)
    if phase == 'error':
        assert (event.fault_exception, event.fault_step, event.fault_code) == (
            'CinderUnavailable', 'attachment_update', 503)
    else:
        assert event.fault_exception is None and event.fault_message is None


def test_the_error_of_a_cast_that_failed_validation_is_read():
    """The worker sends what it knows; unknown fields are null, the event counts."""
    ctxt, msg = notification('attach', 'error', instance_uuid=None, volume_id=None,
                             attachment_id=None, mountpoint=None, flow=None,
                             driver_volume_type=None, duration_ms=3,
                             fault=testing.fault(exception='InvalidInput', code=400,
                                                 step='validate', message='bad uuid'))
    event = parse(ctxt, msg)
    assert (event.outcome, event.instance_uuid, event.volume_id) == ('error', None, None)
    assert (event.fault_exception, event.fault_code) == ('InvalidInput', 400)


def test_a_newer_minor_version_is_read_and_its_new_fields_kept():
    ctxt, msg = notification('attach', 'end')
    msg['payload'][PREFIX + 'version'] = '1.7'
    msg['payload'][PREFIX + 'data']['multipath'] = True
    event = parse(ctxt, msg)
    assert event.payload_version == '1.7'
    assert json.loads(event.payload)[PREFIX + 'data']['multipath'] is True


def test_context_keeps_ids_and_drops_transport_keys():
    ctxt, msg = notification('attach', 'start')
    ctxt['global_request_id'] = 'req-global-1'
    event = parse(ctxt, msg)
    assert event.global_request_id == 'req-global-1'
    assert set(json.loads(event.context)) == {'request_id', 'global_request_id',
                                              'user_id', 'project_id'}


@pytest.mark.parametrize('text,expected', [
    ('2026-11-25 10:00:00.123456', datetime.datetime(2026, 11, 25, 10, 0, 0, 123456)),
    ('2026-11-25T10:00:00Z', datetime.datetime(2026, 11, 25, 10, 0, 0)),
    ('2026-11-25T12:00:00+02:00', datetime.datetime(2026, 11, 25, 10, 0, 0)),
])
def test_timestamps_become_naive_utc(text, expected):
    assert contract.parse_timestamp(text) == expected


def _set(path, value):
    def change(msg):
        target = msg
        for key in path[:-1]:
            target = target[key]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return change


DATA = ('payload', PREFIX + 'data')
MALFORMED = [
    ('not-ours namespace', _set(('payload', PREFIX + 'namespace'), 'nova'),
     "namespace 'nova' is not 'attachworker'"),
    ('detach payload on attach event', _set(('payload', PREFIX + 'name'),
                                            'VolumeDetachPayload'),
     'does not match a volume_attach event'),
    ('major version 2', _set(('payload', PREFIX + 'version'), '2.0'),
     "version '2.0' is not 1.x"),
    ('garbage version', _set(('payload', PREFIX + 'version'), 'one'), 'is not 1.x'),
    ('unversioned payload', _set(('payload',), {'volume_id': 'v'}),
     'not an attachworker_object envelope'),
    ('data not an object', _set(DATA, ['x']), 'payload data is not an object'),
    ('request_id missing', _set(DATA + ('request_id',), KeyError),
     'payload lacks request_id'),
    ('request_id empty', _set(DATA + ('request_id',), ''),
     'request_id must be a non-empty string'),
    ('volume_id missing', _set(DATA + ('volume_id',), KeyError), 'payload lacks volume_id'),
    ('fault missing', _set(DATA + ('fault',), KeyError), 'payload lacks fault'),
    ('host not a string', _set(DATA + ('host',), 42), 'host must be a string or null'),
    ('mountpoint too long', _set(DATA + ('mountpoint',), '/dev/' + 'x' * 300),
     'mountpoint is longer than 255'),
    ('NUL in a field', _set(DATA + ('attachment_id',), 'a\x00b'), 'contains a NUL'),
    ('negative duration', _set(DATA + ('duration_ms',), -1), 'duration_ms must be'),
    ('boolean duration', _set(DATA + ('duration_ms',), True), 'duration_ms must be'),
    ('fault not an object', _set(DATA + ('fault',), 'boom'), 'fault must be an object'),
    ('fault code a string', _set(DATA + ('fault',), {'code': '503'}), 'fault.code'),
    ('message_id missing', _set(('message_id',), KeyError), 'message_id must be'),
    ('priority null', _set(('priority',), None), "priority 'None' is not INFO or ERROR"),
    ('priority warn', _set(('priority',), 'WARN'), "priority 'WARN' is not"),
    ('foreign event type', _set(('event_type',), 'compute.instance.create.end'),
     "event type 'compute.instance.create.end' is not an attachworker volume event"),
    ('timestamp missing', _set(('timestamp',), KeyError), 'timestamp is missing'),
    ('timestamp garbage', _set(('timestamp',), 'yesterday'), 'is not ISO 8601'),
]


@pytest.mark.parametrize('change,reason', [case[1:] for case in MALFORMED],
                         ids=[case[0] for case in MALFORMED])
def test_malformed_notifications_are_refused_with_a_reason(change, reason):
    ctxt, msg = notification('attach', 'end')
    change(msg)
    with pytest.raises(MalformedNotification) as caught:
        parse(ctxt, msg)
    assert reason in str(caught.value)


def test_a_message_that_is_not_an_object_is_refused():
    with pytest.raises(MalformedNotification, match='message is not an object'):
        parse({}, ['not', 'a', 'dict'])


def test_a_payload_larger_than_the_limit_is_refused():
    ctxt, msg = notification('attach', 'error',
                             fault=testing.fault(message='x' * 5000))
    assert parse(ctxt, msg, max_size=6000)
    with pytest.raises(MalformedNotification, match='more than max_message_size'):
        parse(ctxt, msg, max_size=4000)


def test_describe_never_fails_on_odd_shapes():
    assert contract.describe(['x']) == dict.fromkeys(
        ('message_id', 'event_type', 'publisher_id'))
    assert contract.describe({'message_id': 'a\x00' + 'b' * 300, 'event_type': 3}) == {
        'message_id': 'a' + 'b' * 254, 'event_type': None, 'publisher_id': None}


# --- text a database cannot take: refused here, not at the database ---------------

def _everywhere(place, text):
    """Put ``text`` in one place of a contract notification."""
    ctxt, msg = notification('attach', 'error')
    data = msg['payload'][PREFIX + 'data']
    where = {
        'payload value': lambda: data.update(host=text),
        'payload key': lambda: data.update({text: 1}),
        'new payload field, nested': lambda: data.update(extra={'list': ['ok', text]}),
        'fault message': lambda: data['fault'].update(message=text),
        'event_type': lambda: msg.update(event_type=text),
        'publisher_id': lambda: msg.update(publisher_id=text),
        'message_id': lambda: msg.update(message_id=text),
        'timestamp': lambda: msg.update(timestamp=text),
        'context value': lambda: ctxt.update(user_id=text),
        'context key': lambda: ctxt.update({text: 'x'}),
        'context transport key': lambda: ctxt.update(reply_q=text),
    }
    where[place]()
    return ctxt, msg


UNENCODABLE = [
    ('payload value', 'attachworker_object.data.host is not UTF-8 text: lone surrogate '
                      'U+D800 at position 4'),
    ('payload key', "a key of payload.attachworker_object.data is not UTF-8 text: "
                    "lone surrogate U+D800 at position 4 of 'host\\ud800'"),
    ('new payload field, nested', 'payload.attachworker_object.data.extra.list[1] is not'),
    ('fault message', 'payload.attachworker_object.data.fault.message is not UTF-8'),
    ('event_type', 'event_type is not UTF-8 text'),
    ('publisher_id', 'publisher_id is not UTF-8 text'),
    ('message_id', 'message_id is not UTF-8 text'),
    ('timestamp', 'timestamp is not UTF-8 text'),
    ('context value', 'context.user_id is not UTF-8 text'),
    ('context key', "a key of context is not UTF-8 text: lone surrogate U+D800"),
    ('context transport key', 'context.reply_q is not UTF-8 text'),
]


@pytest.mark.parametrize('place,reason', UNENCODABLE, ids=[u[0] for u in UNENCODABLE])
def test_text_utf8_cannot_encode_is_refused_naming_where_it_is(place, reason):
    """A lone surrogate (JSON's "\\ud800") passes every other check; drivers refuse it."""
    ctxt, msg = _everywhere(place, 'host\ud800')
    with pytest.raises(MalformedNotification) as caught:
        parse(ctxt, msg)
    assert reason in str(caught.value)
    str(caught.value).encode('utf-8')  # the reason itself can be stored


def test_other_non_ascii_text_is_accepted():
    ctxt, msg = _everywhere('payload value', 'compute-é-日本-\U0001f600')
    assert parse(ctxt, msg).host == 'compute-é-日本-\U0001f600'


def test_deeply_nested_data_is_checked_without_recursion():
    ctxt, msg = notification('attach', 'start')
    deep = '\udfff'
    for _ in range(5000):
        deep = [deep]
    msg['payload'][PREFIX + 'data']['extra'] = deep
    with pytest.raises(MalformedNotification, match='lone surrogate U[+]DFFF'):
        parse(ctxt, msg)


@pytest.mark.parametrize('event_type', [{'a': 1}, ['x'], 7])
def test_an_event_type_that_is_not_a_string_is_refused(event_type):
    ctxt, msg = notification('attach', 'start')
    msg['event_type'] = event_type  # a dict used to raise TypeError (unhashable)
    with pytest.raises(MalformedNotification, match='is not an attachworker volume event'):
        parse(ctxt, msg)


def test_a_context_that_is_not_an_object_is_refused():
    _, msg = notification('attach', 'start')
    with pytest.raises(MalformedNotification, match='context is not an object'):
        parse(['not', 'a', 'dict'], msg)


# --- masking: every text column, once --------------------------------------------

def test_every_text_column_of_an_event_is_masked():
    secret = 'S3cr3t-value-42'
    ctxt, msg = notification('attach', 'error')
    data = msg['payload'][PREFIX + 'data']
    for key in contract.STRINGS:
        data[key] = '%s password=%s' % (key, secret)
    data['fault'] = testing.fault(exception='E chap_secret=' + secret,
                                  message='X-Auth-Token: ' + secret,
                                  step='s auth_token=' + secret)
    msg['publisher_id'] = 'attachworker-compute:h token=' + secret
    msg['message_id'] = 'm-1 password=' + secret
    ctxt['global_request_id'] = 'req-g secret=' + secret
    ctxt['auth_token'] = secret
    event = parse(ctxt, msg)
    leaked = [key for key, value in event.row().items() if secret in str(value)]
    assert leaked == []
    assert event.publisher_id == 'attachworker-compute:h token=***'
    assert event.message_id == 'm-1 password=***'
    assert event.host == 'host password=***'
    assert event.global_request_id == 'req-g secret=***'


def test_each_text_is_masked_once():
    """oslo.utils' patterns are not idempotent: a second pass would cut more text."""
    text = "{'password': 'pw', 'step': 'attach', 'host': 'compute-1'}"
    ctxt, msg = notification('attach', 'error', fault=testing.fault(message=text))
    event = parse(ctxt, msg)
    assert event.fault_message == masking.mask_text(text)
    assert json.loads(event.payload)[PREFIX + 'data']['fault']['message'] == (
        masking.mask_text(text))

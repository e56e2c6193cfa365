"""Reading a notification: the contract of DESIGN.md, checked before use.

:func:`parse` turns one delivered notification (context dict + message dict, as
oslo.messaging hands them over) into an :class:`AuditEvent` whose fields are the
``events`` columns, or raises :class:`MalformedNotification` with a reason an
operator can act on. The schema is checked before any field is read: the event
type, then the payload envelope's namespace, name and major version. A newer
minor version is accepted and its unknown fields kept in the stored payload.

Before all that, every text of the message and its context (keys included) must
be encodable as UTF-8: JSON can carry a lone surrogate (``"\\ud800"``), which no
database driver will send, so a message with one would fail its whole batch at
the database instead of being refused here, once.

Masking happens here, once per value (a second pass could cut text, see
:func:`masking.mask_row`): every column is read from masked data, the payload
and context, or the message's own ids, each through :func:`masking.mask`.
"""
import collections
from collections import abc
import dataclasses
import datetime
import json
import re
from typing import Any
from typing import Optional

from attachworker.audit import masking
from attachworker.exception import MalformedNotification

PREFIX = 'attachworker_object.'
NAMESPACE = 'attachworker'
MAJOR_VERSION = 1
PRIORITIES = ('info', 'error')

#: event type -> (action, outcome of the event)
EVENT_TYPES = {
    f'instance.volume_{action}.{phase}': (action, outcome)
    for action in ('attach', 'detach', 'extend', 'refresh')
    for phase, outcome in (('start', 'pending'), ('end', 'success'), ('error', 'error'),
                           # an undo that had failed, finished later (never an outcome)
                           ('cleanup', 'cleanup'))
}
PAYLOAD_NAMES = {'attach': 'VolumeAttachPayload', 'detach': 'VolumeDetachPayload',
                 'extend': 'VolumeExtendPayload', 'refresh': 'VolumeRefreshPayload'}

#: The payload fields of version 1.0. The worker sets every one (null when unknown,
#: as in the .error of a cast that failed validation), so each must be present;
#: only request_id, the operation's key, must have a value. Strings are cut at 255
#: by the worker, so longer ones are not the worker's.
STRINGS = ('request_id', 'instance_uuid', 'project_id', 'user_id', 'volume_id',
           'attachment_id', 'mountpoint', 'mode', 'host', 'flow', 'driver_volume_type')
FIELDS = STRINGS + ('duration_ms', 'fault')
FAULT_STRINGS = {'exception': 255, 'step': 255, 'message': None}

#: keys oslo.messaging adds to a notification's context for RPC replies
TRANSPORT_KEYS = ('msg_id', 'reply_q', 'client_timeout')

#: The only code points of a Python str that UTF-8 cannot encode.
_SURROGATE = re.compile('[\ud800-\udfff]')


@dataclasses.dataclass(frozen=True)
class AuditEvent:
    """One notification, validated and masked: a row of ``events``."""

    message_id: str
    request_id: str
    global_request_id: Optional[str]
    event_type: str
    action: str
    outcome: str
    priority: str
    publisher_id: Optional[str]
    payload_name: str
    payload_version: str
    instance_uuid: Optional[str]
    volume_id: Optional[str]
    project_id: Optional[str]
    user_id: Optional[str]
    host: Optional[str]
    attachment_id: Optional[str]
    mountpoint: Optional[str]
    mode: Optional[str]
    flow: Optional[str]
    driver_volume_type: Optional[str]
    duration_ms: Optional[int]
    fault_exception: Optional[str]
    fault_message: Optional[str]
    fault_step: Optional[str]
    fault_code: Optional[int]
    timestamp: datetime.datetime
    received_at: datetime.datetime
    payload: str
    context: str

    def row(self) -> dict:
        return dict(vars(self))  # not dataclasses.asdict: its deep copy is slow


def _bad(reason: str) -> MalformedNotification:
    return MalformedNotification(reason=reason)


def _string(value: Any, name: str, limit: Optional[int], required: bool = False) -> Any:
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise _bad(f'{name} must be a non-empty string' if required
                   else f'{name} must be a string or null')
    if limit is not None and len(value) > limit:
        raise _bad(f'{name} is longer than {limit} characters')
    if '\x00' in value:
        raise _bad(f'{name} contains a NUL character')
    return value


def _surrogate(text: str) -> Optional[str]:
    """What in ``text`` UTF-8 cannot encode, if anything: its lone surrogate."""
    found = _SURROGATE.search(text) if not text.isascii() else None
    return (f'lone surrogate U+{ord(found.group()):04X} at position {found.start()}'
            if found else None)


def _check_encodable(value: Any, name: str) -> None:
    """Refuse ``value`` if any text in it, keys included, is not encodable as UTF-8."""
    try:  # the common case, at C speed: no surrogate anywhere
        if not _SURROGATE.search(json.dumps(value, ensure_ascii=False, default=str)):
            return
    except (TypeError, ValueError, RecursionError):  # keys JSON refuses, too deep
        pass
    todo, seen = collections.deque([(name, value)]), set()
    while todo:  # a loop, not recursion: the depth of JSON is the sender's choice
        where, item = todo.popleft()
        if isinstance(item, str):
            if _surrogate(item):
                raise _bad(f'{where} is not UTF-8 text: {_surrogate(item)}')
            continue
        if not isinstance(item, (abc.Mapping, list, tuple)) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, abc.Mapping):
            for key, child in item.items():
                if isinstance(key, str) and _surrogate(key):
                    raise _bad(f'a key of {where or "the message"} is not UTF-8 text: '
                               f'{_surrogate(key)} of {key!r}')
                todo.append((f'{where}.{key}' if where else str(key), child))
        else:
            todo.extend((f'{where}[{index}]', child) for index, child in enumerate(item))


def _integer(value: Any, name: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2 ** 62:
        raise _bad(f'{name} must be a non-negative integer or null')
    return value


def parse_timestamp(value: Any) -> datetime.datetime:
    """oslo.messaging's ``str(utcnow())`` or ISO 8601 -> naive UTC datetime."""
    if not isinstance(value, str):
        raise _bad('timestamp is missing')
    try:
        parsed = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        raise _bad(f'timestamp {value[:64]!r} is not ISO 8601') from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return parsed


def _envelope(payload: Any, action: str) -> tuple:
    """Check namespace, name and major version; return (name, version, data)."""
    if not isinstance(payload, dict) or PREFIX + 'data' not in payload:
        raise _bad('payload is not an attachworker_object envelope')
    namespace = payload.get(PREFIX + 'namespace')
    name = payload.get(PREFIX + 'name')
    version = payload.get(PREFIX + 'version')
    if namespace != NAMESPACE:
        raise _bad(f'payload namespace {str(namespace)[:64]!r} is not {NAMESPACE!r}')
    if name != PAYLOAD_NAMES[action]:
        raise _bad(f'payload {str(name)[:64]!r} does not match a volume_{action} event')
    major, _, minor = str(version).partition('.')
    if not (major.isdigit() and minor.isdigit()) or int(major) != MAJOR_VERSION:
        raise _bad(f'payload version {str(version)[:16]!r} is not {MAJOR_VERSION}.x')
    data = payload[PREFIX + 'data']
    if not isinstance(data, dict):
        raise _bad('payload data is not an object')
    return name, version, data


def _fault(fault: Any) -> dict:
    if fault is None:
        return dict.fromkeys(('exception', 'message', 'step', 'code'))
    if not isinstance(fault, dict):
        raise _bad('fault must be an object or null')
    values = {key: _string(fault.get(key), f'fault.{key}', limit)
              for key, limit in FAULT_STRINGS.items()}
    values['code'] = _integer(fault.get('code'), 'fault.code')
    return values


def parse(ctxt: Any, message: Any, received_at: datetime.datetime,
          max_size: int) -> AuditEvent:
    """Validate and mask one notification; raise MalformedNotification if it fails."""
    if not isinstance(message, dict):
        raise _bad('message is not an object')
    if ctxt is not None and not isinstance(ctxt, abc.Mapping):
        raise _bad('context is not an object')
    ctxt = ctxt or {}
    _check_encodable(message, '')
    _check_encodable(ctxt, 'context')
    message_id = _string(masking.mask(message.get('message_id')), 'message_id', 255,
                         required=True)
    priority = message.get('priority')
    if not isinstance(priority, str) or priority.lower() not in PRIORITIES:
        raise _bad(f'priority {str(priority)[:32]!r} is not INFO or ERROR')
    event_type = message.get('event_type')
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        raise _bad(f'event type {str(event_type)[:128]!r} is not an attachworker '
                   'volume event')
    action, outcome = EVENT_TYPES[event_type]
    payload = masking.mask(message.get('payload'))
    name, version, data = _envelope(payload, action)
    missing = [key for key in FIELDS if key not in data]
    if missing:
        raise _bad('payload lacks %s' % ', '.join(missing))
    values = {key: _string(data[key], key, 255, required=key == 'request_id')
              for key in STRINGS}
    fault = _fault(data['fault'])
    context = masking.mask({key: value for key, value in ctxt.items()
                            if key not in TRANSPORT_KEYS})
    payload_text = json.dumps(payload, sort_keys=True, default=str)
    if len(payload_text) > max_size:
        raise _bad(f'payload is {len(payload_text)} bytes, more than '
                   f'max_message_size ({max_size})')
    global_request_id = context.get('global_request_id')
    return AuditEvent(
        message_id=message_id, event_type=event_type, action=action, outcome=outcome,
        priority=priority.lower(),
        publisher_id=_string(masking.mask(message.get('publisher_id')), 'publisher_id', 255),
        global_request_id=(global_request_id if isinstance(global_request_id, str)
                           and len(global_request_id) <= 255 else None),
        payload_name=name, payload_version=version, **values,
        duration_ms=_integer(data['duration_ms'], 'duration_ms'),
        fault_exception=fault['exception'], fault_message=fault['message'],
        fault_step=fault['step'], fault_code=fault['code'],
        timestamp=parse_timestamp(message.get('timestamp')), received_at=received_at,
        payload=payload_text, context=json.dumps(context, sort_keys=True, default=str),
    )


def describe(message: Any) -> dict:
    """What a rejected record keeps of a message's identity, whatever its shape."""
    found = {}
    for key in ('message_id', 'event_type', 'publisher_id'):
        value = message.get(key) if isinstance(message, dict) else None
        found[key] = value.replace('\x00', '')[:255] if isinstance(value, str) else None
    return found

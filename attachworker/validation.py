"""Validation of RPC arguments, before any Cinder call.

A cast comes from another process and may be anything: a missing instance, a list
where a dict belongs, an id that is not a UUID, a megabyte string, arguments this
worker does not know. Each of these raises ``InvalidInput`` naming the argument and
the rule it broke; the value itself is quoted only in part, so a huge or hostile
value never reaches a log line or a notification whole.
"""
import dataclasses
import re
from typing import Any
from typing import Optional
import uuid

from oslo_utils import uuidutils

from attachworker import exception

MOUNTPOINT_RE = re.compile(r'/dev/[a-z]+')
MODES = ('rw', 'ro')
INSTANCE_OPTIONAL = ('project_id', 'user_id', 'availability_zone', 'display_name')


#: Context values a cast may carry, and the type each must have.
CONTEXT_STRINGS = ('request_id', 'global_request_id', 'user_id', 'project_id',
                   'auth_token', 'user_domain_id', 'project_domain_id', 'user_name',
                   'project_name')
REQUEST_ID_RE = re.compile(r'[A-Za-z0-9._:-]{1,255}')


class _Request:
    instance: dict

    @property
    def instance_uuid(self) -> str:
        return self.instance['uuid']

    def identity(self, ctxt: Any) -> dict:
        """The operation's fields once the cast is valid."""
        return {'instance_uuid': self.instance_uuid, 'volume_id': self.volume_id,
                'attachment_id': self.attachment_id, 'mode': getattr(self, 'mode', None),
                'mountpoint': getattr(self, 'mountpoint', None),
                'project_id': self.instance.get('project_id') or ctxt.project_id,
                'user_id': self.instance.get('user_id') or ctxt.user_id}


@dataclasses.dataclass(frozen=True)
class AttachRequest(_Request):
    """A validated ``attach_volume`` cast."""

    instance: dict
    volume_id: str
    mountpoint: Optional[str]
    mode: str
    attachment_id: Optional[str]


def encodable(value: str) -> bool:
    """Can the text be stored and published (UTF-8)? A lone surrogate cannot."""
    try:
        value.encode('utf-8')
    except UnicodeEncodeError:
        return False
    return True


def text_or_none(value: Any, max_length: int = 255) -> Optional[str]:
    """Best-effort text for the ``.error`` of a malformed cast: never unencodable."""
    if not isinstance(value, str) or not encodable(value):
        return None
    return value[:max_length]


def raw_fields(ctxt: Any, instance: Any, volume_id: Any, mountpoint: Any,
               mode: Any) -> dict:
    """Best-effort identity of a (maybe malformed) cast, for its ``.error``."""
    uuid_ = instance.get('uuid') if isinstance(instance, dict) else None
    return {'instance_uuid': text_or_none(uuid_), 'volume_id': text_or_none(volume_id),
            'mountpoint': text_or_none(mountpoint), 'mode': text_or_none(mode),
            'project_id': text_or_none(ctxt.project_id),
            'user_id': text_or_none(ctxt.user_id)}


def check_context(ctxt: Any) -> None:
    """The RPC context is input too: every value a string of sane length, roles a
    list of strings. (attachworker.rpc replaced what it could not read.)"""
    invalid = getattr(ctxt, 'invalid', None)
    if invalid:
        raise exception.InvalidInput(reason='bad RPC context: %s' % invalid)


def _quote(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else '%s... (%d characters)' % (text[:32], len(text))


def _string(name: str, value: Any, max_length: int) -> str:
    if not isinstance(value, str):
        raise exception.InvalidInput(
            reason='%s must be a string, got %s' % (name, type(value).__name__))
    if not encodable(value):
        raise exception.InvalidInput(reason='%s is not valid text (it cannot be encoded '
                                     'as UTF-8)' % name)
    if len(value) > max_length:
        raise exception.InvalidInput(reason='%s is too long (%d characters, at most %d)'
                                     % (name, len(value), max_length))
    return value


def _uuid(name: str, value: Any, max_length: int) -> str:
    if value is None:
        raise exception.InvalidInput(reason='%s is required' % name)
    value = _string(name, value, max_length)
    if not uuidutils.is_uuid_like(value):
        raise exception.InvalidInput(reason='%s is not a UUID: %s' % (name, _quote(value)))
    return str(uuid.UUID(value))  # canonical form: Cinder and the journal compare it


def _device(name: str, value: Any, max_length: int) -> None:
    """A device name, when given: ``/dev/vdb``..."""
    if value is not None:
        _string(name, value, max_length)
        if not MOUNTPOINT_RE.fullmatch(value):
            raise exception.InvalidInput(
                reason='%s must look like /dev/vdb, got %s' % (name, _quote(value)))


def uuid_argument(name: str, value: Any, max_length: int) -> str:
    """A UUID argument of a command (``attachworker-manage``): canonical, or InvalidInput."""
    return _uuid(name, value, max_length)


def _no_unknown(unknown: dict) -> None:
    if unknown:
        names = ', '.join(sorted(_quote(name) for name in unknown)[:5])
        raise exception.InvalidInput(reason='unexpected arguments: %s' % names)


def _instance(value: Any, max_length: int) -> dict:
    if value is None:
        raise exception.InvalidInput(reason='instance is required')
    if not isinstance(value, dict):
        raise exception.InvalidInput(
            reason='instance must be a dict, got %s' % type(value).__name__)
    instance = {'uuid': _uuid('instance.uuid', value.get('uuid'), max_length)}
    for key in INSTANCE_OPTIONAL:
        if value.get(key) is not None:
            instance[key] = _string('instance.%s' % key, value[key], max_length)
    return instance


def attach_request(instance: Any, volume_id: Any, mountpoint: Any, mode: Any,
                   attachment_id: Any, unknown: dict, max_length: int) -> AttachRequest:
    """Check every argument of an ``attach_volume`` cast; raise InvalidInput."""
    _no_unknown(unknown)
    checked_instance = _instance(instance, max_length)
    checked_volume = _uuid('volume_id', volume_id, max_length)
    _device('mountpoint', mountpoint, max_length)
    if mode not in MODES:
        raise exception.InvalidInput(reason='mode must be rw or ro, got %s' % _quote(mode))
    if attachment_id is not None:
        attachment_id = _uuid('attachment_id', attachment_id, max_length)
    return AttachRequest(instance=checked_instance, volume_id=checked_volume,
                         mountpoint=mountpoint, mode=mode, attachment_id=attachment_id)


def context_problem(values: Any) -> Optional[str]:
    """What is wrong with a serialized RPC context, or None."""
    if not isinstance(values, dict):
        return 'the context is a %s, not a dict' % type(values).__name__
    for key in CONTEXT_STRINGS:
        value = values.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            return '%s must be a string, got %s' % (key, type(value).__name__)
        if not encodable(value) or len(value) > 8192:
            return '%s is not valid text or too long' % key
    for key in ('request_id', 'global_request_id'):
        if values.get(key) and not REQUEST_ID_RE.fullmatch(values[key]):
            return '%s has characters a request id cannot have: %s' % (key, _quote(values[key]))
    roles = values.get('roles')
    if roles is not None and not (isinstance(roles, list) and len(roles) < 256 and all(
            isinstance(r, str) and encodable(r) and len(r) < 256 for r in roles)):
        return 'roles must be a list of strings'
    catalog = values.get('service_catalog')
    if catalog is not None and not isinstance(catalog, list):
        return 'service_catalog must be a list'
    return None


#: Argument names oslo.messaging's dispatcher passes itself.
_RESERVED_ARGUMENTS = ('ctxt', 'self')
VERSION_RE = re.compile(r'\d{1,4}\.\d{1,4}')


def message_problem(message: dict) -> Optional[str]:
    """What makes an RPC message undeliverable before any endpoint sees it, or None."""
    args = message.get('args', {})
    if not isinstance(args, dict):
        return 'args is a %s, not a dict' % type(args).__name__
    for name in args:
        if not isinstance(name, str) or name in _RESERVED_ARGUMENTS:
            return 'argument name %s is not allowed' % _quote(name)
    version = message.get('version', '1.0')
    if not isinstance(version, str) or not VERSION_RE.fullmatch(version):
        return 'version %s is not like 1.1' % _quote(version)
    namespace = message.get('namespace')
    if namespace is not None and not isinstance(namespace, str):
        return 'namespace must be a string'
    return None


@dataclasses.dataclass(frozen=True)
class DetachRequest(_Request):
    """A validated ``detach_volume`` cast."""

    instance: dict
    volume_id: str
    attachment_id: Optional[str]


def detach_request(instance: Any, volume_id: Any, attachment_id: Any, unknown: dict,
                   max_length: int) -> DetachRequest:
    """Check every argument of a ``detach_volume`` cast; raise InvalidInput."""
    _no_unknown(unknown)
    checked_instance = _instance(instance, max_length)
    checked_volume = _uuid('volume_id', volume_id, max_length)
    if attachment_id is not None:
        attachment_id = _uuid('attachment_id', attachment_id, max_length)
    return DetachRequest(instance=checked_instance, volume_id=checked_volume,
                         attachment_id=attachment_id)


@dataclasses.dataclass(frozen=True)
class ReserveRequest(_Request):
    """A validated ``reserve_block_device_name`` call."""

    instance: dict
    volume_id: str
    device: Optional[str]
    tag: Optional[str]
    multiattach: bool
    attachment_id: Optional[str] = None


def reserve_request(instance: Any, volume_id: Any, device: Any, tag: Any, multiattach: Any,
                    unknown: dict, max_length: int) -> ReserveRequest:
    """Check every argument of a ``reserve_block_device_name`` call; InvalidInput."""
    _no_unknown(unknown)
    checked_instance = _instance(instance, max_length)
    checked_volume = _uuid('volume_id', volume_id, max_length)
    _device('device', device, max_length)
    if tag is not None:
        _string('tag', tag, max_length)
    if not isinstance(multiattach, bool):
        raise exception.InvalidInput(
            reason='multiattach must be true or false, got %s' % _quote(multiattach))
    return ReserveRequest(instance=checked_instance, volume_id=checked_volume, device=device,
                          tag=tag, multiattach=multiattach)


@dataclasses.dataclass(frozen=True)
class ExtendRequest(_Request):
    """A validated ``extend_volume`` cast. ``new_size`` (GiB) is the caller's word
    only: the pipeline reads the size from Cinder."""

    instance: dict
    volume_id: str
    new_size: Optional[int]
    attachment_id: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class RefreshRequest(_Request):
    """A validated ``volume_attachment refresh`` (an operator's command, not a cast)."""

    instance: dict
    volume_id: str
    attachment_id: Optional[str] = None


def refresh_request(instance_uuid: Any, volume_id: Any, max_length: int) -> RefreshRequest:
    return RefreshRequest(instance={'uuid': _uuid('INSTANCE', instance_uuid, max_length)},
                          volume_id=_uuid('VOLUME', volume_id, max_length))


def extend_request(instance: Any, volume_id: Any, new_size: Any, unknown: dict,
                   max_length: int) -> ExtendRequest:
    """Check every argument of an ``extend_volume`` cast; raise InvalidInput."""
    _no_unknown(unknown)
    checked_instance = _instance(instance, max_length)
    checked_volume = _uuid('volume_id', volume_id, max_length)
    if new_size is not None and (isinstance(new_size, bool) or not isinstance(new_size, int)
                                 or not 0 < new_size < 2 ** 31):
        raise exception.InvalidInput(
            reason='new_size must be a positive number of GiB or null, got %s'
            % _quote(new_size))
    return ExtendRequest(instance=checked_instance, volume_id=checked_volume,
                         new_size=new_size)

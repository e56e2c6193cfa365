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


@dataclasses.dataclass(frozen=True)
class AttachRequest:
    """A validated ``attach_volume`` cast."""

    instance: dict
    volume_id: str
    mountpoint: Optional[str]
    mode: str
    attachment_id: Optional[str]

    @property
    def instance_uuid(self) -> str:
        return self.instance['uuid']


def _quote(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else '%s... (%d characters)' % (text[:32], len(text))


def _string(name: str, value: Any, max_length: int) -> str:
    if not isinstance(value, str):
        raise exception.InvalidInput(
            reason='%s must be a string, got %s' % (name, type(value).__name__))
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
    if mountpoint is not None:
        _string('mountpoint', mountpoint, max_length)
        if not MOUNTPOINT_RE.fullmatch(mountpoint):
            raise exception.InvalidInput(
                reason='mountpoint must look like /dev/vdb, got %s' % _quote(mountpoint))
    if mode not in MODES:
        raise exception.InvalidInput(reason='mode must be rw or ro, got %s' % _quote(mode))
    if attachment_id is not None:
        attachment_id = _uuid('attachment_id', attachment_id, max_length)
    return AttachRequest(instance=checked_instance, volume_id=checked_volume,
                         mountpoint=mountpoint, mode=mode, attachment_id=attachment_id)


@dataclasses.dataclass(frozen=True)
class DetachRequest:
    """A validated ``detach_volume`` cast."""

    instance: dict
    volume_id: str
    attachment_id: Optional[str]

    @property
    def instance_uuid(self) -> str:
        return self.instance['uuid']


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

"""Versioned notification payloads (oslo.versionedobjects).

The wire form is ``obj_to_primitive()`` with serial namespace ``attachworker_object``
so a consumer can check ``attachworker_object.name``/``.version`` before reading
``attachworker_object.data``. Bump ``VERSION`` (minor for additive changes) and
refresh ``samples/`` whenever a field changes; tests compare against the samples.

Sample ``.error`` data::

    {"request_id": "req-6c1e...", "instance_uuid": "8f0e...", "volume_id": "b120...",
     "attachment_id": "5d77...", "mountpoint": "/dev/vdb", "mode": "rw",
     "host": "compute-1", "flow": "attachments", "driver_volume_type": "iscsi",
     "duration_ms": 412, "project_id": "4c2a...", "user_id": "d13b...",
     "fault": {"exception": "CinderUnavailable", "message": "...",
               "step": "attachment_update", "code": 503}}
"""
from typing import Any
from typing import Optional

from oslo_utils import strutils
from oslo_versionedobjects import base as ovo_base
from oslo_versionedobjects import fields

#: Longest fault message carried in a notification.
MAX_FAULT_MESSAGE = 1024


class _FaultType(fields.FieldType):
    """``{"exception", "message", "step", "code"}``, a plain JSON object on the wire."""

    KEYS = ('exception', 'message', 'step', 'code')

    def coerce(self, obj: Any, attr: str, value: Any) -> dict:
        if not isinstance(value, dict) or set(value) - set(self.KEYS):
            raise ValueError('%s must be a dict with keys %s' % (attr, self.KEYS))
        fault = {key: value.get(key) for key in self.KEYS}
        if fault['code'] is not None:
            fault['code'] = int(fault['code'])
        if fault['message'] is not None:
            fault['message'] = strutils.mask_password(str(fault['message']))[:MAX_FAULT_MESSAGE]
        return fault


class FaultField(fields.AutoTypedField):
    AUTO_TYPE = _FaultType()


class PayloadBase(ovo_base.VersionedObject):
    OBJ_SERIAL_NAMESPACE = 'attachworker_object'
    OBJ_PROJECT_NAMESPACE = 'attachworker'

    def to_primitive(self) -> dict:
        """The wire form: name, namespace, version and data; no change tracking."""
        self.obj_reset_changes(recursive=True)
        return self.obj_to_primitive()


_VOLUME_FIELDS = {
    'request_id': fields.StringField(nullable=True),
    'instance_uuid': fields.StringField(nullable=True),
    'project_id': fields.StringField(nullable=True),
    'user_id': fields.StringField(nullable=True),
    'volume_id': fields.StringField(nullable=True),
    'attachment_id': fields.StringField(nullable=True),
    'mountpoint': fields.StringField(nullable=True),
    'mode': fields.StringField(nullable=True),
    'host': fields.StringField(nullable=True),
    'flow': fields.StringField(nullable=True),
    'driver_volume_type': fields.StringField(nullable=True),
    'duration_ms': fields.IntegerField(nullable=True),
    'fault': FaultField(nullable=True),
}


@ovo_base.VersionedObjectRegistry.register_if(False)
class VolumeAttachPayload(PayloadBase):
    # Version 1.0: initial version
    VERSION = '1.0'
    fields = dict(_VOLUME_FIELDS)


@ovo_base.VersionedObjectRegistry.register_if(False)
class VolumeDetachPayload(PayloadBase):
    # Version 1.0: initial version
    VERSION = '1.0'
    fields = dict(_VOLUME_FIELDS)


@ovo_base.VersionedObjectRegistry.register_if(False)
class VolumeExtendPayload(PayloadBase):
    """The attach/detach fields, plus ``new_size``: the volume's size in GiB as Cinder
    reports it (the size the disk was grown to; null until read), and ``old_size``:
    what the host's disk had before, in GiB rounded up (null when the driver cannot
    tell)."""

    # Version 1.0: initial version
    VERSION = '1.0'
    fields = dict(_VOLUME_FIELDS, new_size=fields.IntegerField(nullable=True),
                  old_size=fields.IntegerField(nullable=True))


@ovo_base.VersionedObjectRegistry.register_if(False)
class VolumeRefreshPayload(PayloadBase):
    """The attach/detach fields (``attachment_id``: the new attachment, null until
    made), plus ``old_attachment_id``: the attachment it replaces."""

    # Version 1.0: initial version
    VERSION = '1.0'
    fields = dict(_VOLUME_FIELDS, old_attachment_id=fields.StringField(nullable=True))


PAYLOADS = {'volume_attach': VolumeAttachPayload, 'volume_detach': VolumeDetachPayload,
            'volume_extend': VolumeExtendPayload, 'volume_refresh': VolumeRefreshPayload}


def make_payload(action: str, fault: Optional[dict] = None, **values: Any) -> PayloadBase:
    """Build the payload of ``action`` (``volume_attach``/``_detach``/``_extend``/``_refresh``).

    Every field is set (null when unknown) so consumers always see the same keys.
    Values longer than a sane id are cut: a malformed cast must not make a
    megabyte notification.
    """
    cls = PAYLOADS[action]
    data = {}
    for name in cls.fields:
        value = fault if name == 'fault' else values.get(name)
        if isinstance(value, str):
            value = value[:255]
        data[name] = value
    return cls(**data)

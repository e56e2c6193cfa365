"""Cinder calls for one request: plain dicts in and out, our exceptions raised.

Retries (``http_retries``), of connection failures and HTTP 500/504, only for
idempotent calls (GET, DELETE, undo calls): a non-idempotent call that failed may
have been done, and the pipeline undoes it.
"""
from typing import Any
from typing import Callable
from typing import Optional

from cinderclient import api_versions
from cinderclient import exceptions as cinder_exc
from keystoneauth1 import exceptions as ks_exc
from oslo_log import log as logging

from attachworker import exception
from attachworker import metrics
from attachworker.cinder.errors import translate

LOG = logging.getLogger(__name__)

MIN_ATTACHMENTS_VERSION = api_versions.APIVersion('3.44')
MODE_VERSION = api_versions.APIVersion('3.54')


def _volume_view(volume: Any) -> dict:
    """The fields the pipeline reads, as a plain dict."""
    info = volume.to_dict() if hasattr(volume, 'to_dict') else dict(volume)
    return {
        'id': info.get('id'),
        'status': info.get('status'),
        'size': info.get('size'),  # GiB
        'attach_status': info.get('attach_status'),
        'multiattach': bool(info.get('multiattach')),
        'availability_zone': info.get('availability_zone'),
        'project_id': info.get('os-vol-tenant-attr:tenant_id'),
        'attachments': list(info.get('attachments') or []),
    }


def _nest_connection_info(flat: dict) -> dict:
    """An attachment's connection_info in the ``{driver_volume_type, data}`` form.

    The attachments API returns the driver's keys flat, beside ``driver_volume_type``
    and ``attachment_id``; initialize_connection (and every virt driver) uses the
    nested form.
    """
    data = {k: v for k, v in flat.items() if k not in ('driver_volume_type', 'attachment_id')}
    return {'driver_volume_type': flat.get('driver_volume_type'), 'data': data} if flat else {}


class CinderClient:
    """Cinder calls for one request; returns plain dicts, raises our exceptions."""

    def __init__(self, once: Any, retried: Any, version: api_versions.APIVersion,
                 attach_flow: str, endpoint: Optional[str] = None) -> None:
        self._endpoint = endpoint
        self._once = once
        self._retried = retried
        self.version = version
        self.flow = self._pick_flow(attach_flow)

    @property
    def honours_mode(self) -> bool:
        """Does attachment_create keep ``mode`` (rw/ro)? Only from 3.54 on."""
        return self.version >= MODE_VERSION

    def _pick_flow(self, wanted: str) -> str:
        supports = self.version >= MIN_ATTACHMENTS_VERSION
        if wanted == 'attachments' and not supports:
            raise exception.CinderError(
                reason='[cinder] attach_flow = attachments needs microversion 3.44; '
                       'Cinder offers %s' % self.version.get_string(), code=400)
        if wanted == 'legacy' or not supports:
            return 'legacy'
        return 'attachments'

    def _call(self, step: str, fn: Callable[[Any], Any], idempotent: bool = False,
              **ids: Any) -> Any:
        try:
            with metrics.cinder_call(step, self._endpoint):
                return fn(self._retried if idempotent else self._once)
        except (cinder_exc.ClientException, cinder_exc.ConnectionError,
                ks_exc.ClientException) as exc:
            if isinstance(exc, (ks_exc.ConnectionError, cinder_exc.ConnectionError)):
                metrics.no_answer(step, isinstance(exc, ks_exc.ConnectTimeout))
            raise translate(step, exc, **ids) from exc

    # --- reads -------------------------------------------------------------------------
    def get(self, volume_id: str) -> dict:
        return _volume_view(self._call('get_volume', lambda c: c.volumes.get(volume_id),
                                       idempotent=True, volume_id=volume_id))

    def attachment_get(self, attachment_id: str) -> dict:
        shown = self._call('attachment_get', lambda c: c.attachments.show(attachment_id),
                           idempotent=True, attachment_id=attachment_id)
        return shown.to_dict()

    # --- attachments flow (3.44+) -----------------------------------------------------
    def attachment_create(self, volume_id: str, instance_uuid: str, mode: str) -> dict:
        mode = mode if self.version >= MODE_VERSION else 'null'
        return self._call('attachment_create', lambda c: c.attachments.create(
            volume_id, None, instance_uuid, mode=mode), volume_id=volume_id)

    def attachment_update(self, attachment_id: str, connector: dict,
                          mountpoint: Optional[str]) -> dict:
        connector = dict(connector, mountpoint=mountpoint) if mountpoint else connector
        updated = self._call('attachment_update', lambda c: c.attachments.update(
            attachment_id, connector), attachment_id=attachment_id)
        info = updated.to_dict() if hasattr(updated, 'to_dict') else dict(updated)
        return _nest_connection_info(info.get('connection_info') or {})

    def attachment_complete(self, attachment_id: str) -> None:
        self._call('attachment_complete', lambda c: c.attachments.complete(attachment_id),
                   attachment_id=attachment_id)

    def attachment_delete(self, attachment_id: str) -> None:
        """Delete an attachment; one that no longer exists counts as deleted."""
        try:
            self._call('attachment_delete', lambda c: c.attachments.delete(attachment_id),
                       idempotent=True, attachment_id=attachment_id)
        except exception.AttachmentNotFound:
            LOG.info('Attachment %s was already gone', attachment_id)

    # --- legacy flow ---------------------------------------------------------------------
    def reserve(self, volume_id: str) -> None:
        self._call('reserve', lambda c: c.volumes.reserve(volume_id), volume_id=volume_id)

    def unreserve(self, volume_id: str) -> None:
        self._call('unreserve', lambda c: c.volumes.unreserve(volume_id), idempotent=True,
                   volume_id=volume_id)

    def initialize_connection(self, volume_id: str, connector: dict) -> dict:
        return self._call('initialize_connection', lambda c: c.volumes.initialize_connection(
            volume_id, connector), volume_id=volume_id)

    def terminate_connection(self, volume_id: str, connector: dict) -> None:
        self._call('terminate_connection', lambda c: c.volumes.terminate_connection(
            volume_id, connector), idempotent=True, volume_id=volume_id)

    def attach(self, volume_id: str, instance_uuid: str, mountpoint: Optional[str],
               mode: str, host_name: Optional[str] = None) -> None:
        """Mark the volume attached; ``host_name`` makes Cinder record this host."""
        self._call('attach', lambda c: c.volumes.attach(
            volume_id, instance_uuid, mountpoint, mode=mode, host_name=host_name),
            volume_id=volume_id)

    def begin_detaching(self, volume_id: str) -> None:
        self._call('begin_detaching', lambda c: c.volumes.begin_detaching(volume_id),
                   volume_id=volume_id)

    def roll_detaching(self, volume_id: str) -> None:
        self._call('roll_detaching', lambda c: c.volumes.roll_detaching(volume_id),
                   idempotent=True, volume_id=volume_id)

    def detach(self, volume_id: str, attachment_id: Optional[str]) -> None:
        """Legacy detach of one attachment."""
        self._call('detach', lambda c: c.volumes.detach(volume_id, attachment_id),
                   idempotent=True, volume_id=volume_id)

    def attachments_of(self, volume_id: str) -> list:
        """Every attachment of the volume, attached or not: [{id, instance, status}]."""
        found = self._call('attachment_list', lambda c: c.attachments.list(
            search_opts={'volume_id': volume_id, 'all_tenants': 1}), idempotent=True,
            volume_id=volume_id)
        return [{'id': a.id, 'instance': getattr(a, 'instance', None),
                 'status': getattr(a, 'status', None)} for a in found]

    def detach_instance(self, volume_id: str, instance_uuid: str) -> None:
        """Legacy detach of the instance, if Cinder shows it attached."""
        for att in self.get(volume_id)['attachments']:
            if att.get('server_id') == instance_uuid:
                self.detach(volume_id, att.get('attachment_id'))

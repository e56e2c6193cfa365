"""The detach pipeline, in the order Nova does it: the host lets go, then Cinder.

How the volume was attached comes from the driver's record of the attachment
(flow, attachment id, mode), not from today's ``[cinder] attach_flow``: a volume
attached by the legacy flow is detached by the legacy flow (its backend export is
terminated) even after the configuration changed. Only an attachment with no
record (made before records existed) falls back to today's flow.

Once the host may have let go, going back is not possible: the ``driver_detach``
step arms a *finish* entry (attachworker.worker.undo) that completes the detach in
Cinder, whoever runs the stack after a failure or a crash.
"""
from typing import Any
from typing import Callable

from oslo_log import log as logging

from attachworker import checks
from attachworker import exception

LOG = logging.getLogger(__name__)


class HostKeptTheVolume(exception.VirtDriverError):
    """The driver failed and the host still has the volume: nothing changed."""

    msg_fmt = 'The host did not let go of volume %(volume_id)s: %(reason)s'
    code = 409
    expected = True  # definite: the detach is rolled back, not finished


def _host_detach(driver: Any, ctxt: Any, instance: dict, mountpoint: Any,
                 volume_id: str) -> None:
    """The driver's detach; a failure that left the volume on the host is definite."""
    try:
        driver.detach_volume(ctxt, instance, mountpoint, volume_id)
    except Exception as exc:
        if getattr(exc, 'expected', False):
            raise
        try:
            kept = any(a['volume_id'] == volume_id
                       for a in driver.get_attachments(instance['uuid']))
        except Exception:  # noqa: BLE001 - cannot tell: the failure stays ambiguous
            raise exc from None
        if kept:
            raise HostKeptTheVolume(volume_id=volume_id, reason=exc) from exc
        raise


def _find(volume: dict, on_host: Any, req: Any) -> Any:
    """The instance's Cinder attachment the cast means (None: Cinder has none)."""
    mine = [a for a in volume['attachments'] if a.get('server_id') == req.instance_uuid]
    if req.attachment_id is None:
        return mine[0] if mine else None
    for attached in mine:
        if attached.get('attachment_id') == req.attachment_id:
            return attached
    known = sorted({a.get('attachment_id') for a in mine}
                   | ({on_host['attachment_id']} if on_host and on_host.get('attachment_id')
                      else set()))
    if mine or on_host:
        raise exception.InvalidInput(
            reason='attachment %s is not the attachment of volume %s to instance %s '
                   '(it has %s)' % (req.attachment_id, req.volume_id, req.instance_uuid,
                                    ', '.join(str(k) for k in known) or 'none in Cinder'))
    return None


def detach_pipeline(cinder_api: Any, driver: Any, connector_fn: Callable[[], dict],
                    ctxt: Any, req: Any, op: Any) -> None:
    cinder = op.step('cinder_client', cinder_api.client, ctxt)
    volume = op.step('get_volume', cinder.get, req.volume_id)
    checks.trusted(ctxt, volume, req.instance, req.volume_id)
    on_host = next((a for a in driver.get_attachments(req.instance_uuid)
                    if a['volume_id'] == req.volume_id), None)
    attached = _find(volume, on_host, req)
    if attached is None and on_host is None:
        LOG.info('Volume %s is not attached to instance %s: nothing to do',
                 req.volume_id, req.instance_uuid)
        return
    flow = (on_host or {}).get('flow')
    if flow is None:
        flow = cinder.flow
        LOG.warning('No record of how volume %s was attached to %s: detaching with '
                    "today's %s flow", req.volume_id, req.instance_uuid, flow)
    attachment_id = attached.get('attachment_id') if attached else None
    mountpoint = ((attached or {}).get('device')
                  or (on_host['mountpoint'] if on_host else None))
    op.update(flow=flow, attachment_id=attachment_id, mountpoint=mountpoint,
              mode=(on_host or {}).get('mode'))
    connector = op.step('connector', connector_fn)
    legacy = flow == 'legacy' and attached is not None
    if legacy:
        op.step('begin_detaching', cinder.begin_detaching, req.volume_id,
                undo=('roll_detaching', {'volume_id': req.volume_id}))
    op.step('driver_detach', _host_detach, driver, ctxt, req.instance, mountpoint,
            req.volume_id,
            finish=('finish_detach', {'instance_uuid': req.instance_uuid,
                                      'volume_id': req.volume_id, 'mountpoint': mountpoint,
                                      'attachment_id': attachment_id, 'flow': flow,
                                      'connector': connector}))
    if attached is None:
        op.commit()
        return  # Cinder had forgotten it already
    if legacy:
        op.step('terminate_connection', cinder.terminate_connection, req.volume_id,
                connector)
        op.step('detach', cinder.detach, req.volume_id, attachment_id, commit=True)
    else:
        op.step('attachment_delete', cinder.attachment_delete, attachment_id, commit=True)

"""The refresh pipeline: an attached volume gets a new Cinder attachment made with
today's connector, and its disk on the host the new connection info.

``attachworker-manage volume_attachment refresh INSTANCE VOLUME`` runs it, as
``nova-manage volume_attachment refresh`` does for Nova (e.g. after the storage
network of the host changed), through the same journal, locks and outcome as a
cast (``instance.volume_refresh.start/.end/.error``).

The order is Nova's, for Nova's reason: Cinder terminates the old connection before
it makes the new one (a backend with one export per host, such as LVM, would take
the new connection down with the old one otherwise).

1. checks (nothing changed when they refuse): the virt driver can do it; the
   instance is stopped; this host and Cinder both have the volume attached to the
   instance, with the same attachment, by the attachments flow;
2. ``attachment_create`` without a connector: a new attachment keeps the volume
   reserved for the instance (undo: delete it);
3. ``attachment_delete`` of the old attachment: Cinder terminates its connection.
   There is no way back from here: the step arms a *finish* entry
   (``finish_refresh``, attachworker.worker.undo) that completes the refresh
   instead, whoever runs the stack after a failure or a crash; until it succeeds
   the operation stays ``undo_failed`` and recovery tries again every round;
4. ``attachment_update`` of the new attachment with the connector;
5. the virt driver gives the disk the new connection info and record;
6. ``attachment_complete``: the volume is ``in-use`` with the new attachment.
"""
from typing import Any
from typing import Callable
from typing import Optional

from oslo_log import log as logging

from attachworker import exception

LOG = logging.getLogger(__name__)


def can_refresh(driver: Any, volume: dict, req: Any) -> tuple:
    """(the host's record of the attachment, Cinder's attachment id), or refused."""
    def refuse(reason: str) -> None:
        raise exception.VolumeNotRefreshable(volume_id=req.volume_id, reason=reason)

    if not driver.capabilities.get('supports_refresh_connection'):
        raise exception.RefreshNotSupported(
            volume_id=req.volume_id, reason='[virt] driver %s cannot do it'
            % type(driver).__name__)
    running = driver.instance_running(req.instance_uuid)
    if running is not False:
        raise exception.InstanceNotStopped(
            instance_uuid=req.instance_uuid, volume_id=req.volume_id,
            reason='its guest is running' if running else
            'the virt driver cannot tell whether its guest runs')
    on_host = next((a for a in driver.get_attachments(req.instance_uuid)
                    if a['volume_id'] == req.volume_id), None)
    if on_host is None:
        refuse('it is not attached to instance %s on this host' % req.instance_uuid)
    if on_host.get('flow') != 'attachments':
        refuse('it was attached by the %s flow, not the attachments flow: detach it and '
               'attach it again' % (on_host.get('flow') or 'unrecorded'))
    # what the driver could not do once the old attachment is gone, refused now
    driver.check_refresh(req.instance_uuid, req.volume_id)
    mine = [a for a in volume['attachments'] if a.get('server_id') == req.instance_uuid]
    if not mine:
        refuse('Cinder shows no attachment of it to instance %s' % req.instance_uuid)
    old = mine[0].get('attachment_id')
    if on_host.get('attachment_id') not in (None, old):
        refuse('this host has attachment %s and Cinder %s (see volume_attachment show)'
               % (on_host['attachment_id'], old))
    if volume['status'] != 'in-use':
        refuse('its status in Cinder is %s, expected in-use' % volume['status'])
    return on_host, old


def _delete_old(cinder: Any, old: str) -> None:
    """Delete the old attachment. A refusal is definite (the refresh is undone, the
    old attachment kept) only if the old attachment is still there and attached: a
    retry refused after a first try that did the work (the answer lost) is not, and
    an old attachment that is gone is deleted."""
    try:
        cinder.attachment_delete(old)
    except Exception as exc:
        if not getattr(exc, 'expected', False):
            raise
        try:
            still = cinder.attachment_get(old).get('status') == 'attached'
        except exception.AttachmentNotFound:
            LOG.info('Attachment %s is gone: its delete was done after all', old)
            return
        except Exception:  # noqa: BLE001 - cannot tell: not definite
            still = False
        if still:
            raise
        raise exception.CinderError(reason='deleting attachment %s was refused (%s), and '
                                    'it is not attached any more' % (old, exc)) from exc


def refresh_pipeline(cinder_api: Any, driver: Any, connector_fn: Callable[[], dict],
                     ctxt: Any, req: Any, op: Any,
                     connector: Optional[dict] = None) -> None:
    """``connector``: the operator's (``--connector FILE``), else today's."""
    cinder = op.step('cinder_client', cinder_api.client, ctxt)
    volume = op.step('get_volume', cinder.get, req.volume_id)
    on_host, old = op.step('check_refresh', can_refresh, driver, volume, req)
    mountpoint, mode = on_host['mountpoint'], on_host.get('mode') or 'rw'
    op.update(old_attachment_id=old, mountpoint=mountpoint, mode=mode, flow='attachments')
    if connector is None:
        connector = op.step('connector', connector_fn)
    op.update(connector=connector)
    ids = {'volume_id': req.volume_id, 'instance_uuid': req.instance_uuid}
    created = op.step('attachment_create', cinder.attachment_create, req.volume_id,
                      req.instance_uuid, mode,
                      undo=('release_attachment', dict(ids, attachment_id=None, ours=True)),
                      rearm=lambda result: {'attachment_id': result['id']})
    new = created['id']
    op.update(attachment_id=new)
    record = {'flow': 'attachments', 'attachment_id': new, 'mode': mode,
              'multiattach': bool(volume.get('multiattach'))}
    op.step('attachment_delete', _delete_old, cinder, old,
            finish=('finish_refresh', dict(ids, attachment_id=new, old_attachment_id=old,
                                           mountpoint=mountpoint, connector=connector,
                                           record=record)))
    info = op.step('attachment_update', cinder.attachment_update, new, connector, mountpoint)
    op.update(driver_volume_type=(info or {}).get('driver_volume_type'))
    op.step('driver_refresh', driver.refresh_connection, ctxt, info, req.instance,
            mountpoint, req.volume_id, record)
    op.step('attachment_complete', cinder.attachment_complete, new, commit=True)
    LOG.info('Volume %(vol)s of instance %(inst)s: attachment %(old)s replaced by %(new)s '
             'with connector of host %(host)s', {'vol': req.volume_id,
                                                 'inst': req.instance_uuid, 'old': old,
                                                 'new': new, 'host': connector.get('host')})

"""The attach pipeline, top to bottom, each undo named beside its step
(attachworker.worker.undo says what each does). attachworker.manager runs it under
the journal, the locks and the outcome (``ComputeManager._run``):

1. get the volume, check the controller's attachment if the cast names one, check
   the volume can be attached (a duplicate of an attach already done answers
   ``.end`` and changes nothing);
2. gather this host's connector properties, reserve the device;
3. Cinder: attachments flow (attachment_create unless the controller reserved,
   attachment_update) or legacy flow (reserve, initialize_connection);
4. the virt driver attaches, keeping the record of how (flow, attachment, mode);
5. Cinder: attachment_complete, or legacy attach. The volume is ``in-use``.
"""
from typing import Any
from typing import Callable

from oslo_log import log as logging

from attachworker import checks
from attachworker import exception

LOG = logging.getLogger(__name__)


def attach_pipeline(conf: Any, cinder_api: Any, driver: Any, connector_fn: Callable[[], dict],
                    ctxt: Any, req: Any, op: Any, compensator: Any) -> None:
    cinder = op.step('cinder_client', cinder_api.client, ctxt)
    flow = 'attachments' if req.attachment_id else cinder.flow
    op.update(flow=flow)
    if req.attachment_id:
        op.step('check_reservation', checks.controller_attachment, cinder, req)
    volume = op.step('get_volume', cinder.get, req.volume_id)
    checks.trusted(ctxt, volume, req.instance, req.volume_id)
    if already_attached(driver, volume, req, op, compensator):
        return  # committed: the live attachment is not this cast's to release
    op.step('check_attach', checks.can_attach, conf, driver, cinder,
            volume, req, flow)
    connector = op.step('connector', connector_fn)
    op.update(connector=connector)
    ids = {'volume_id': req.volume_id, 'instance_uuid': req.instance_uuid}

    # the device: the one reserved by reserve_block_device_name, the cast's, or
    # the next free one; released if the attach fails
    mountpoint = op.step('reserve_device', driver.reserve_device_name,
                         req.instance_uuid, req.volume_id, req.mountpoint,
                         undo=('release_device', ids))
    op.update(mountpoint=mountpoint)

    if flow == 'attachments':
        if not req.attachment_id:
            created = op.step('attachment_create', cinder.attachment_create,
                              req.volume_id, req.instance_uuid, req.mode,
                              undo=('release_attachment',
                                    dict(ids, attachment_id=None, ours=True)),
                              rearm=lambda result: {'attachment_id': result['id']})
            op.update(attachment_id=created['id'])
        connection_info = op.step('attachment_update', cinder.attachment_update,
                                  op.fields['attachment_id'], connector, mountpoint)
    else:
        op.step('reserve', cinder.reserve, req.volume_id,
                undo=('unreserve', {'volume_id': req.volume_id}))
        connection_info = op.step('initialize_connection', cinder.initialize_connection,
                                  req.volume_id, connector,
                                  undo=('terminate_connection',
                                        {'volume_id': req.volume_id,
                                         'connector': connector}))
    op.update(driver_volume_type=(connection_info or {}).get('driver_volume_type'))

    record = {'flow': flow, 'attachment_id': op.fields.get('attachment_id'),
              'mode': req.mode, 'multiattach': bool(volume.get('multiattach'))}
    if flow == 'attachments':
        resume = ('complete_attachment', {'attachment_id': op.fields['attachment_id']})
    else:
        resume = ('legacy_attach', dict(ids, mountpoint=mountpoint, mode=req.mode,
                                        host_name=connector.get('host')))
    op.step('driver_attach', driver.attach_volume, ctxt, connection_info,
            req.instance, mountpoint, req.volume_id, record,
            undo=('driver_detach', dict(ids, mountpoint=mountpoint,
                                        attachment_id=record['attachment_id'])),
            resume=resume)

    if flow == 'attachments':
        # If the answer is lost, only this worker can have completed it.
        op.step('attachment_complete', cinder.attachment_complete,
                op.fields['attachment_id'], commit=True,
                undo=('release_attachment', dict(
                    ids, attachment_id=op.fields['attachment_id'], ours=True)))
    else:
        op.step('attach', cinder.attach, req.volume_id, req.instance_uuid, mountpoint,
                req.mode, connector.get('host'), undo=('legacy_detach', ids),
                commit=True)
        op.update(attachment_id=checks.legacy_attachment_id(cinder, req))

def already_attached(driver: Any, volume: dict, req: Any, op: Any, compensator: Any) -> bool:
    """A duplicate cast: the volume is already attached to this instance.

    Answered ``.end`` only when the host has the volume too; the answer is
    journalled as the operation's commit, so a kill after it undoes nothing.
    """
    for attached in volume['attachments']:
        if attached.get('server_id') != req.instance_uuid:
            continue
        existing = attached.get('attachment_id') or attached.get('id')
        if not any(a['volume_id'] == req.volume_id
                   for a in driver.get_attachments(req.instance_uuid)):
            raise exception.InvalidVolume(
                volume_id=req.volume_id,
                reason='Cinder shows it attached to this instance (attachment %s) but '
                       'this host does not have it: detach it first' % existing)
        LOG.info('Volume %(volume)s is already attached to instance %(instance)s '
                 '(attachment %(att)s): nothing to do',
                 {'volume': req.volume_id, 'instance': req.instance_uuid, 'att': existing})
        if req.attachment_id and req.attachment_id != existing:
            # The controller reserved a second attachment for the duplicate:
            # release it now (its undo), so the volume keeps exactly one.
            entry = op.stack[0]
            op.step('release_reservation', compensator.run, entry['name'], entry['args'])
        op.update(attachment_id=existing, mountpoint=attached.get('device'))
        op.step('duplicate', lambda: None, commit=True)
        return True
    return False

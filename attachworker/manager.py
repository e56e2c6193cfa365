"""The compute manager: the RPC endpoint and the attach pipeline.

``attach_volume`` is the whole attach, top to bottom, each undo beside its step:

1. validate the cast (nothing is called before every argument is checked);
2. under the instance's lock: get the volume and check it can be attached
   (a duplicate of an attach already done answers ``.end`` and changes nothing);
3. gather this host's connector properties;
4. Cinder: attachments flow (attachment_create unless the controller reserved,
   attachment_update) or legacy flow (reserve, initialize_connection);
5. the virt driver attaches;
6. Cinder: attachment_complete, or legacy attach. The volume is ``in-use``.

Every cast ends with exactly one outcome notification: ``.end``, or ``.error``
after undoing what was done, naming the step that failed. Nothing raises out of
an endpoint method: the worker goes on to the next cast.
"""
import threading
from typing import Any
from typing import Callable
from typing import Optional

from oslo_concurrency import lockutils
from oslo_config import cfg
from oslo_log import log as logging
import oslo_messaging as messaging

from attachworker import exception
from attachworker import outbox
from attachworker import validation
from attachworker.operation import Operation

LOG = logging.getLogger(__name__)

RPC_API_VERSION = '1.1'
ATTACH = 'volume_attach'
DETACH = 'volume_detach'


class ComputeManager:
    """Serves topic ``compute`` for one host. Collaborators are injected."""

    target = messaging.Target(version=RPC_API_VERSION)

    def __init__(self, conf: cfg.ConfigOpts, cinder_api: Any, virt_driver: Any,
                 outbox: Any, connector: Callable[[], dict]) -> None:
        self._conf = conf
        self._cinder = cinder_api
        self._driver = virt_driver
        self._outbox = outbox
        self._journal = outbox.journal
        self._connector = connector
        #: Set when the graceful shutdown timeout ran out: running operations stop
        #: at their next step and are undone.
        self.abort = threading.Event()

    # --- RPC methods -------------------------------------------------------------------
    def attach_volume(self, ctxt: Any, instance: Any = None, volume_id: Any = None,
                      mountpoint: Any = None, mode: Any = 'rw', attachment_id: Any = None,
                      **unknown: Any) -> None:
        """Cast: attach ``volume_id`` to ``instance``; the outcome is a notification."""
        self._run(ctxt, ATTACH, _raw_fields(ctxt, instance, volume_id, mountpoint, mode),
                  lambda: validation.attach_request(
                      instance, volume_id, mountpoint, mode, attachment_id, unknown,
                      self._conf.worker.max_argument_length),
                  self._attach)

    def detach_volume(self, ctxt: Any, instance: Any = None, volume_id: Any = None,
                      attachment_id: Any = None, **unknown: Any) -> None:
        """Cast (1.1): detach ``volume_id`` from ``instance``; outcome as a notification."""
        self._run(ctxt, DETACH, _raw_fields(ctxt, instance, volume_id, None, None),
                  lambda: validation.detach_request(
                      instance, volume_id, attachment_id, unknown,
                      self._conf.worker.max_argument_length),
                  self._detach)

    def _run(self, ctxt: Any, action: str, raw: dict, validate: Callable[[], Any],
             pipeline: Callable[[Any, Any, Operation], None]) -> None:
        """Journal, validate, notify ``.start``, run ``pipeline`` under the instance's
        lock, and end with exactly one ``.end`` or ``.error`` (after the undos)."""
        ctxt.update_store()
        op = Operation(action, ctxt.request_id, self._conf.host, self.abort, self._journal)
        op.update(**raw)
        try:
            self._journal.begin(op, outbox.context_of(ctxt))
            req = validate()
        except (exception.InvalidInput, exception.JournalError) as exc:
            self._finish(ctxt, op, 'failed', exc)
            return
        op.update(instance_uuid=req.instance_uuid, volume_id=req.volume_id,
                  attachment_id=req.attachment_id, mode=getattr(req, 'mode', None),
                  mountpoint=getattr(req, 'mountpoint', None),
                  project_id=req.instance.get('project_id') or ctxt.project_id,
                  user_id=req.instance.get('user_id') or ctxt.user_id)
        self._outbox.notify(ctxt, action, 'start', **op.payload())
        try:
            with lockutils.lock('instance-%s' % req.instance_uuid):
                pipeline(ctxt, req, op)
        except Exception as exc:  # noqa: BLE001 - every cast ends with an outcome
            undo_failed = op.undo()
            self._finish(ctxt, op, 'undo_failed' if undo_failed else 'undone', exc,
                         undo_failed)
            return
        LOG.info('%(action)s of volume %(volume)s on instance %(instance)s done '
                 '(device %(dev)s, %(flow)s flow)',
                 {'action': action, 'volume': req.volume_id,
                  'instance': req.instance_uuid, 'dev': op.fields.get('mountpoint'),
                  'flow': op.fields.get('flow')})
        self._finish(ctxt, op, 'completed')

    # --- the pipeline ------------------------------------------------------------------
    def _attach(self, ctxt: Any, req: validation.AttachRequest, op: Operation) -> None:
        cinder = op.step('cinder_client', self._cinder.client, ctxt)
        flow = 'attachments' if req.attachment_id else cinder.flow
        op.update(flow=flow)
        volume = op.step('get_volume', cinder.get, req.volume_id)
        if self._already_attached(cinder, volume, req, op):
            return
        op.step('check_attach', self._check_attach, volume, req)
        connector = op.step('connector', self._connector)

        mountpoint = req.mountpoint
        if mountpoint is None:
            mountpoint = op.step('reserve_device', self._driver.reserve_device_name,
                                 req.instance_uuid, req.volume_id,
                                 undo=('release_device', self._driver.release_device_name,
                                       req.instance_uuid, req.volume_id))
            op.update(mountpoint=mountpoint)

        if flow == 'attachments':
            undo_attachment = ('attachment_delete', self._delete_attachment, cinder, op, req)
            if req.attachment_id:
                # A reservation made by the controller is ours to release on failure
                # too: otherwise the volume stays 'reserved'.
                op.push_undo(*undo_attachment)
            else:
                created = op.step('attachment_create', cinder.attachment_create,
                                  req.volume_id, req.instance_uuid, req.mode,
                                  undo=undo_attachment)
                op.update(attachment_id=created['id'])
            connection_info = op.step('attachment_update', cinder.attachment_update,
                                      op.fields['attachment_id'], connector, mountpoint)
        else:
            op.step('reserve', cinder.reserve, req.volume_id,
                    undo=('unreserve', cinder.unreserve, req.volume_id))
            connection_info = op.step('initialize_connection', cinder.initialize_connection,
                                      req.volume_id, connector,
                                      undo=('terminate_connection', cinder.terminate_connection,
                                            req.volume_id, connector))
        op.update(driver_volume_type=(connection_info or {}).get('driver_volume_type'))

        op.step('driver_attach', self._driver.attach_volume, ctxt, connection_info,
                req.instance, mountpoint, req.volume_id,
                undo=('driver_detach', self._driver.detach_volume, ctxt, req.instance,
                      mountpoint, req.volume_id))

        if flow == 'attachments':
            op.step('attachment_complete', cinder.attachment_complete,
                    op.fields['attachment_id'])
        else:
            op.step('attach', cinder.attach, req.volume_id, req.instance_uuid, mountpoint,
                    req.mode, connector.get('host'),
                    undo=('detach', cinder.detach_instance, req.volume_id, req.instance_uuid))
        op.commit()
        if flow == 'legacy':
            op.update(attachment_id=self._legacy_attachment_id(cinder, req))

    def _legacy_attachment_id(self, cinder: Any, req: validation.AttachRequest
                              ) -> Optional[str]:
        """The id Cinder gave the legacy attachment: for the audit trail and detach.

        The attach is done; failing to read it back only leaves the id out.
        """
        try:
            volume = cinder.get(req.volume_id)
        except exception.AttachWorkerException as exc:
            LOG.warning('Attached, but could not read back the attachment id: %s', exc)
            return None
        for attached in volume['attachments']:
            if attached.get('server_id') == req.instance_uuid:
                return attached.get('attachment_id')
        return None

    def _detach(self, ctxt: Any, req: validation.DetachRequest, op: Operation) -> None:
        """Detach, in the order Nova does: Cinder is told last, once the host let go."""
        cinder = op.step('cinder_client', self._cinder.client, ctxt)
        op.update(flow=cinder.flow)
        volume = op.step('get_volume', cinder.get, req.volume_id)
        attached = next((a for a in volume['attachments']
                         if a.get('server_id') == req.instance_uuid
                         and req.attachment_id in (None, a.get('attachment_id'))), None)
        on_host = [a for a in self._driver.get_attachments(req.instance_uuid)
                   if a['volume_id'] == req.volume_id]
        if attached is None and not on_host:
            LOG.info('Volume %s is not attached to instance %s: nothing to do',
                     req.volume_id, req.instance_uuid)
            return
        if attached is not None:
            op.update(attachment_id=attached.get('attachment_id'),
                      mountpoint=attached.get('device'))
        mountpoint = op.fields.get('mountpoint') or (on_host[0]['mountpoint'] if on_host
                                                     else None)
        op.update(mountpoint=mountpoint)
        connector = op.step('connector', self._connector)
        legacy = cinder.flow == 'legacy' and attached is not None
        if legacy:
            op.step('begin_detaching', cinder.begin_detaching, req.volume_id,
                    undo=('roll_detaching', cinder.roll_detaching, req.volume_id))
        # The host lets go first: no undo (re-attaching would need the secrets we
        # never keep); a later failure leaves the volume in-use, and a retry works.
        op.step('driver_detach', self._driver.detach_volume, ctxt, req.instance,
                mountpoint, req.volume_id)
        if attached is None:
            return  # Cinder had forgotten it already
        if legacy:
            op.step('terminate_connection', cinder.terminate_connection, req.volume_id,
                    connector)
            op.step('detach', cinder.detach, req.volume_id, op.fields['attachment_id'])
        else:
            op.step('attachment_delete', cinder.attachment_delete, op.fields['attachment_id'])
        op.commit()

    @staticmethod
    def _delete_attachment(cinder: Any, op: Operation, req: validation.AttachRequest) -> None:
        """Undo of attachment_create, also when its answer never came back."""
        if op.fields.get('attachment_id'):
            cinder.attachment_delete(op.fields['attachment_id'])
        else:
            cinder.release_reservations(req.volume_id, req.instance_uuid)

    def _already_attached(self, cinder: Any, volume: dict, req: validation.AttachRequest,
                          op: Operation) -> bool:
        """A duplicate cast: the volume is already attached to this instance."""
        for attached in volume['attachments']:
            if attached.get('server_id') != req.instance_uuid:
                continue
            existing = attached.get('attachment_id') or attached.get('id')
            LOG.info('Volume %(volume)s is already attached to instance %(instance)s '
                     '(attachment %(att)s): nothing to do',
                     {'volume': req.volume_id, 'instance': req.instance_uuid, 'att': existing})
            if req.attachment_id and req.attachment_id != existing:
                # The controller reserved a second attachment for the duplicate:
                # release it so the volume keeps exactly one.
                op.step('attachment_delete', cinder.attachment_delete, req.attachment_id)
            op.update(attachment_id=existing, mountpoint=attached.get('device'))
            return True
        return False

    def _check_attach(self, volume: dict, req: validation.AttachRequest) -> None:
        """Refuse, before any change in Cinder, a volume that cannot be attached."""
        def refuse(reason: str) -> None:
            raise exception.InvalidVolume(volume_id=req.volume_id, reason=reason)

        status = volume['status']
        allowed = {'reserved'} if req.attachment_id else {'available'}
        if volume['multiattach']:
            if not self._driver.capabilities.get('supports_multiattach'):
                refuse('it is multiattach and the virt driver cannot share volumes')
            allowed.add('in-use')
        if status not in allowed:
            hint = '' if volume['multiattach'] or status != 'in-use' else \
                ' (attached elsewhere and not multiattach)'
            refuse('its status is %s, expected %s%s'
                   % (status, ' or '.join(sorted(allowed)), hint))
        instance_az = req.instance.get('availability_zone')
        if (not self._conf.cinder.cross_az_attach and instance_az
                and volume['availability_zone'] != instance_az):
            refuse('it is in availability zone %s and the instance in %s, and '
                   '[cinder] cross_az_attach is false'
                   % (volume['availability_zone'], instance_az))

    # --- outcomes ----------------------------------------------------------------------
    def _finish(self, ctxt: Any, op: Operation, state: str,
                exc: Optional[BaseException] = None, undo_failed: Optional[list] = None) -> None:
        """Journal the end state and its notification together, then publish it."""
        fault = None
        if exc is not None:
            fault = op.fault(exc, undo_failed)
            log = LOG.warning if getattr(exc, 'expected', False) else LOG.error
            log('%(action)s of volume %(volume)s failed at step %(step)s: %(exc)s',
                {'action': op.action, 'volume': op.fields.get('volume_id'),
                 'step': fault['step'], 'exc': fault['message']},
                exc_info=not getattr(exc, 'expected', False))
        phase = 'error' if fault else 'end'
        payload = op.payload(final=True)
        try:
            outbox_id = self._journal.finish(
                op.id, state, op.fields,
                notification={'action': op.action, 'phase': phase, 'fields': payload,
                              'fault': fault, 'context': outbox.context_of(ctxt)})
        except exception.JournalError as journal_exc:
            LOG.error('Could not journal the end of %s: %s', op.fields['request_id'],
                      journal_exc)
            outbox_id = None
        self._outbox.send(outbox_id, ctxt, op.action, phase, fault, payload)

    def reject(self, ctxt: Any, method: str, exc: BaseException) -> None:
        """A cast the dispatcher could not deliver (unknown method or version)."""
        if method not in ('attach_volume', 'detach_volume'):
            return
        action = 'volume_attach' if method == 'attach_volume' else 'volume_detach'
        op = Operation(action, ctxt.request_id, self._conf.host)
        op.current_step = 'rpc'
        self._outbox.notify(ctxt, action, 'error', fault=op.fault(exc),
                            **op.payload(final=True))


def _raw_fields(ctxt: Any, instance: Any, volume_id: Any, mountpoint: Any,
                mode: Any) -> dict:
    """Best-effort identity of a malformed cast, for its ``.error`` notification."""
    def text(value: Any) -> Optional[str]:
        return value[:255] if isinstance(value, str) else None

    uuid = instance.get('uuid') if isinstance(instance, dict) else None
    return {'instance_uuid': text(uuid), 'volume_id': text(volume_id),
            'mountpoint': text(mountpoint), 'mode': text(mode),
            'project_id': ctxt.project_id, 'user_id': ctxt.user_id}

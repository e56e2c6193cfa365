"""The compute manager: the RPC endpoint and the attach pipeline.

``attach_volume`` is the whole attach, top to bottom, each undo named beside its
step (attachworker.worker.undo says what each does):

1. validate the cast and its context (nothing is called before every argument is
   checked); journal it, then let the broker forget it;
2. under the instance's and the volume's lock (shared by every process of the
   host): get the volume, check the controller's attachment if the cast names
   one, check the volume can be attached (a duplicate of an attach already done
   answers ``.end`` and changes nothing);
3. gather this host's connector properties;
4. Cinder: attachments flow (attachment_create unless the controller reserved,
   attachment_update) or legacy flow (reserve, initialize_connection);
5. the virt driver attaches, keeping the record of how (flow, attachment, mode);
6. Cinder: attachment_complete, or legacy attach. The volume is ``in-use``.

Every cast ends with exactly one outcome notification: ``.end``, or ``.error``
after undoing what was done, naming the step that failed. Nothing raises out of
an endpoint method: the worker goes on to the next cast. ``detach_volume`` and
``extend_volume`` go through the same ``_run`` (journal, locks, outcome) with the
pipelines of attachworker.detach and attachworker.extend.
"""
import threading
from typing import Any
from typing import Callable
from typing import Optional

from oslo_config import cfg
from oslo_log import log as logging
import oslo_messaging as messaging

from attachworker import checks
from attachworker import devices
from attachworker import exception
from attachworker import metrics
from attachworker import validation
from attachworker.detach import detach_pipeline
from attachworker.extend import extend_pipeline
from attachworker.worker import delivery as aw_delivery
from attachworker.worker import locks
from attachworker.worker import outbox
from attachworker.worker.operation import Operation
from attachworker.worker.outcomes import Outcomes
from attachworker.worker.undo import Compensator

LOG = logging.getLogger(__name__)

RPC_API_VERSION = '1.3'
ATTACH = 'volume_attach'
DETACH = 'volume_detach'
EXTEND = 'volume_extend'


class ComputeManager:
    """Serves topic ``compute`` for one host. Collaborators are injected."""

    target = messaging.Target(version=RPC_API_VERSION)
    #: The only methods reachable over RPC, and the action each one notifies (calls
    #: notify nothing: their caller gets the answer, or the error).
    RPC_METHODS = {'attach_volume': ATTACH, 'detach_volume': DETACH,
                   'reserve_block_device_name': None, 'extend_volume': EXTEND}

    def __init__(self, conf: cfg.ConfigOpts, cinder_api: Any, virt_driver: Any,
                 outbox: Any, connector: Callable[[], dict]) -> None:
        self._conf = conf
        self._cinder = cinder_api
        self._driver = virt_driver
        self._outbox = outbox
        self._journal = outbox.journal
        self._connector = connector
        self._outcomes = Outcomes(outbox)
        #: Set when the graceful shutdown timeout ran out: running operations stop
        #: at their next step and are undone.
        self.abort = threading.Event()

    # --- RPC methods -------------------------------------------------------------------
    def attach_volume(self, ctxt: Any, instance: Any = None, volume_id: Any = None,
                      mountpoint: Any = None, mode: Any = 'rw', attachment_id: Any = None,
                      **unknown: Any) -> None:
        """Cast: attach ``volume_id`` to ``instance``; the outcome is a notification."""
        self._run(ctxt, ATTACH, validation.raw_fields(ctxt, instance, volume_id,
                                                      mountpoint, mode),
                  lambda: validation.attach_request(
                      instance, volume_id, mountpoint, mode, attachment_id, unknown,
                      self._conf.worker.max_argument_length),
                  self._attach)

    def detach_volume(self, ctxt: Any, instance: Any = None, volume_id: Any = None,
                      attachment_id: Any = None, **unknown: Any) -> None:
        """Cast (1.1): detach ``volume_id`` from ``instance``; outcome as a notification."""
        self._run(ctxt, DETACH, validation.raw_fields(ctxt, instance, volume_id, None, None),
                  lambda: validation.detach_request(
                      instance, volume_id, attachment_id, unknown,
                      self._conf.worker.max_argument_length),
                  self._detach)

    def extend_volume(self, ctxt: Any, instance: Any = None, volume_id: Any = None,
                      new_size: Any = None, **unknown: Any) -> None:
        """Cast (1.3): Cinder extended ``volume_id``; grow its disk in ``instance``
        (attachworker.extend). The size is Cinder's; ``new_size`` is advisory."""
        self._run(ctxt, EXTEND, validation.raw_fields(ctxt, instance, volume_id, None, None),
                  lambda: validation.extend_request(
                      instance, volume_id, new_size, unknown,
                      self._conf.worker.max_argument_length),
                  lambda c, req, op: extend_pipeline(self._cinder, self._driver, c, req, op))

    @messaging.expected_exceptions(exception.InvalidInput, exception.VolumeAlreadyAttached,
                                   exception.DeviceInUse, exception.MultiattachNotSupported)
    def reserve_block_device_name(self, ctxt: Any, instance: Any = None,
                                  volume_id: Any = None, device: Any = None, tag: Any = None,
                                  multiattach: Any = False, **unknown: Any) -> str:
        """Call (1.2): reserve and return the device the next attach of the volume to
        the instance will use, as Nova's conductor asks before it casts the attach.

        Refused (the caller gets a RemoteError naming the exception) for a volume
        already attached to or reserved for the instance, a taken ``device``, or
        ``multiattach`` on a driver that cannot share volumes. The name is the virt
        driver's, recorded under the instance's lock: two calls, through any process
        of the host, never get the same one. Unused, it is released after
        ``[worker] reservation_timeout``.
        """
        ctxt.update_store()
        validation.check_context(ctxt)
        req = validation.reserve_request(instance, volume_id, device, tag, multiattach,
                                         unknown, self._conf.worker.max_argument_length)
        return devices.reserve(self._conf, self._driver, req)

    def expire_reservations(self) -> int:
        """Not an RPC method: release device names no attach used in time."""
        return devices.expire(self._conf, self._driver)

    def _run(self, ctxt: Any, action: str, raw: dict, validate: Callable[[], Any],
             pipeline: Callable[[Any, Any, Operation], None]) -> None:
        """Validate, journal (then ack), notify ``.start``, run ``pipeline`` under the
        locks, and end with exactly one ``.end`` or ``.error`` (after the undos, still
        under the locks: nothing of this instance or volume runs in between)."""
        ctxt.update_store()  # log lines carry the cast's request id
        delivery = aw_delivery.current()
        if self.abort.is_set():
            # stopping: a cast not yet journalled goes back to the queue, for the
            # next start, instead of failing at its first step
            delivery.release()
            return
        op = Operation(action, ctxt.request_id, self._conf.host, self.abort, self._journal)
        op.update(**raw)
        req, invalid = None, None
        try:
            validation.check_context(ctxt)
            req = validate()
            op.update(**req.identity(ctxt))  # journalled, attachment_id included
        except exception.InvalidInput as exc:
            invalid = exc
        try:
            if not self._journal.begin(op, outbox.context_of(ctxt), delivery.unique_id,
                                       self._first_undo(req, op)):
                LOG.info('Cast %s was delivered again; it is already journalled',
                         delivery.unique_id)
                delivery.ack()
                return
        except exception.JournalError as exc:
            invalid = invalid or exc
        delivery.ack()
        if invalid is not None:
            self._outcomes.finish(ctxt, op, 'failed', invalid)
            return
        self._outbox.notify(ctxt, action, 'start', **op.payload())
        with metrics.IN_FLIGHT.labels(action).track_inprogress(), \
                locks.instance_lock(self._conf.state_path, req.instance_uuid), \
                locks.volume_lock(self._conf.state_path, req.volume_id):
            try:
                pipeline(ctxt, req, op)
            except Exception as exc:  # noqa: BLE001 - every cast ends with an outcome
                self._failed(ctxt, op, exc)
                return
            LOG.info('%(action)s of volume %(volume)s on instance %(instance)s done '
                     '(device %(dev)s, %(flow)s flow)',
                     {'action': action, 'volume': req.volume_id,
                      'instance': req.instance_uuid, 'dev': op.fields.get('mountpoint'),
                      'flow': op.fields.get('flow')})
            self._outcomes.finish(ctxt, op, 'completed')

    def _failed(self, ctxt: Any, op: Operation, exc: Exception) -> None:
        if getattr(exc, 'touch_nothing', False):
            self._outcomes.finish(ctxt, op, 'failed', exc)
            return
        undo_failed, finished = op.undo(self._compensator(ctxt))
        if finished:
            self._outcomes.finish(ctxt, op, 'completed')
        else:
            self._outcomes.finish(ctxt, op, 'undo_failed' if undo_failed else 'undone',
                                  exc, undo_failed)

    def retry_unjournalled(self) -> None:
        """Not an RPC method: journal outcomes published while the journal failed."""
        self._outcomes.retry()

    def _compensator(self, ctxt: Any) -> Compensator:
        return Compensator(lambda: self._cinder.client(ctxt), self._driver, ctxt,
                           self._journal.attachments_in_use)

    @staticmethod
    def _first_undo(req: Any, op: Operation) -> Optional[dict]:
        """A reservation the controller made is released if anything later fails.

        Armed with the cast's own record, before any step: a kill at any point
        releases it. The undo itself checks the attachment is this cast's
        (attachworker.worker.undo), so a mismatched or live attachment is never touched.
        """
        attachment_id = getattr(req, 'attachment_id', None)
        if op.action != ATTACH or attachment_id is None:
            return None
        return op.arm('receive', ('release_attachment', {
            'attachment_id': attachment_id, 'volume_id': req.volume_id,
            'instance_uuid': req.instance_uuid, 'ours': False}))

    # --- the pipeline ------------------------------------------------------------------
    def _attach(self, ctxt: Any, req: validation.AttachRequest, op: Operation) -> None:
        cinder = op.step('cinder_client', self._cinder.client, ctxt)
        flow = 'attachments' if req.attachment_id else cinder.flow
        op.update(flow=flow)
        if req.attachment_id:
            op.step('check_reservation', checks.controller_attachment, cinder, req)
        volume = op.step('get_volume', cinder.get, req.volume_id)
        checks.trusted(ctxt, volume, req.instance, req.volume_id)
        if self._already_attached(volume, req, op, self._compensator(ctxt)):
            return  # committed: the live attachment is not this cast's to release
        op.step('check_attach', checks.can_attach, self._conf, self._driver, cinder,
                volume, req, flow)
        connector = op.step('connector', self._connector)
        op.update(connector=connector)
        ids = {'volume_id': req.volume_id, 'instance_uuid': req.instance_uuid}

        # the device: the one reserved by reserve_block_device_name, the cast's, or
        # the next free one; released if the attach fails
        mountpoint = op.step('reserve_device', self._driver.reserve_device_name,
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
        op.step('driver_attach', self._driver.attach_volume, ctxt, connection_info,
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

    def _detach(self, ctxt: Any, req: validation.DetachRequest, op: Operation) -> None:
        detach_pipeline(self._cinder, self._driver, self._connector, ctxt, req, op)

    def _already_attached(self, volume: dict, req: validation.AttachRequest,
                          op: Operation, compensator: Compensator) -> bool:
        """A duplicate cast: the volume is already attached to this instance.

        Answered ``.end`` only when the host has the volume too; the answer is
        journalled as the operation's commit, so a kill after it undoes nothing.
        """
        for attached in volume['attachments']:
            if attached.get('server_id') != req.instance_uuid:
                continue
            existing = attached.get('attachment_id') or attached.get('id')
            if not any(a['volume_id'] == req.volume_id
                       for a in self._driver.get_attachments(req.instance_uuid)):
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

    # --- outcomes ----------------------------------------------------------------------
    def reject(self, ctxt: Any, method: str, exc: BaseException) -> None:
        """Not an RPC method (see RPC_METHODS): the dispatcher's hook for casts it
        could not deliver (unknown method or version, a context it cannot read)."""
        self._outcomes.reject(ctxt, self.RPC_METHODS.get(method), exc,
                              aw_delivery.current())

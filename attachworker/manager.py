"""The compute manager: the RPC endpoint, and how every operation runs.

Each operation goes through ``_run``:

1. validate the cast and its context (nothing is called before every argument is
   checked); journal it, then let the broker forget it;
2. notify ``.start``; under the instance's and the volume's lock (shared by every
   process of the host) run its pipeline: attachworker.attach, .detach, .extend,
   or .refresh (``attachworker-manage volume_attachment refresh``, not an RPC
   method).

Every operation ends with exactly one outcome notification: ``.end``, or ``.error``
after undoing what was done, naming the step that failed. Nothing raises out of
an endpoint method: the worker goes on to the next cast.
"""
import contextlib
import threading
from typing import Any
from typing import Callable
from typing import Optional

from oslo_config import cfg
from oslo_log import log as logging
import oslo_messaging as messaging

from attachworker import devices
from attachworker import exception
from attachworker import metrics
from attachworker import validation
from attachworker.attach import attach_pipeline
from attachworker.detach import detach_pipeline
from attachworker.extend import extend_pipeline
from attachworker.refresh import refresh_pipeline
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
REFRESH = 'volume_refresh'


class _Refused:
    """A compensator for an operation whose locks were refused: no undo runs without
    them, each is recorded failed (``exc``) for the periodic round to run."""

    def __init__(self, exc: Exception) -> None:
        self._exc = exc

    def run(self, name: str, args: dict) -> None:
        raise self._exc


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

    def refresh_connection(self, ctxt: Any, instance_uuid: Any, volume_id: Any,
                           connector: Optional[dict] = None) -> Optional[Operation]:
        """Not an RPC method: ``attachworker-manage volume_attachment refresh``
        (attachworker.refresh). The operation, whose ``ended`` says how it ended."""
        return self._run(ctxt, REFRESH, validation.raw_fields(ctxt, {'uuid': instance_uuid},
                                                              volume_id, None, None),
                         lambda: validation.refresh_request(
                             instance_uuid, volume_id, self._conf.worker.max_argument_length),
                         lambda c, req, op: refresh_pipeline(
                             self._cinder, self._driver, self._connector, c, req, op,
                             connector))

    def expire_reservations(self) -> int:
        """Not an RPC method: release device names no attach used in time."""
        return devices.expire(self._conf, self._driver)

    def _run(self, ctxt: Any, action: str, raw: dict, validate: Callable[[], Any],
             pipeline: Callable[[Any, Any, Operation], None]) -> Optional[Operation]:
        """Validate, journal (then ack), notify ``.start``, run ``pipeline`` under the
        locks, and end with exactly one ``.end`` or ``.error`` (after the undos, still
        under the locks: nothing of this instance or volume runs in between; locks that
        cannot be taken leave the undos to the periodic round). The operation, or None
        when it was not run (stopping, or a cast delivered again)."""
        ctxt.update_store()  # log lines carry the cast's request id
        delivery = aw_delivery.current()
        if self.abort.is_set():
            # stopping: a cast not yet journalled goes back to the queue, for the
            # next start, instead of failing at its first step
            delivery.release()
            return None
        op = Operation(action, ctxt.request_id, self._conf.host, self.abort, self._journal)
        op.update(**raw)
        req, invalid = None, None
        try:
            validation.check_context(ctxt)
            req = validate()
            op.update(**req.identity(ctxt))  # journalled, attachment_id included
        except exception.InvalidInput as exc:
            invalid = exc
        # the .start goes into the outbox with the operation: one write, and no
        # operation journalled without it
        payload = op.payload() if invalid is None else None
        start = None if payload is None else {
            'action': action, 'phase': 'start', 'fields': payload, 'fault': None,
            'context': outbox.context_of(ctxt)}
        try:
            if not self._journal.begin(op, outbox.context_of(ctxt), delivery.unique_id,
                                       self._first_undo(req, op), start):
                LOG.info('Cast %s was delivered again; it is already journalled',
                         delivery.unique_id)
                delivery.ack()
                return None
        except exception.JournalError as exc:
            invalid = invalid or exc
        delivery.ack()
        if invalid is not None:
            self._outcomes.finish(ctxt, op, 'failed', invalid)
            return op
        self._outbox.send(op.start_outbox, ctxt, action, 'start', None, payload)
        held = contextlib.ExitStack()
        try:
            held.enter_context(locks.instance_and_volume(
                self._conf.state_path, req.instance_uuid, req.volume_id))
        except exception.LocksUnavailable as exc:
            # acknowledged and journalled, so it ends now (no step ran); but its undos
            # (the controller's reservation) must not run unlocked, beside a process
            # that holds the locks: each is recorded failed, and the periodic round
            # runs it under the locks (attachworker.worker.recovery), no second .error
            op.current_step = 'locks'
            self._failed(ctxt, op, exc, _Refused(exc))
            return op
        with held, metrics.IN_FLIGHT.labels(action).track_inprogress():
            try:
                pipeline(ctxt, req, op)
            except Exception as exc:  # noqa: BLE001 - every cast ends with an outcome
                self._failed(ctxt, op, exc)
                return op
            LOG.info('%(action)s of volume %(volume)s on instance %(instance)s done '
                     '(device %(dev)s, %(flow)s flow)',
                     {'action': action, 'volume': req.volume_id,
                      'instance': req.instance_uuid, 'dev': op.fields.get('mountpoint'),
                      'flow': op.fields.get('flow')})
            self._outcomes.finish(ctxt, op, 'completed')
        return op

    def _failed(self, ctxt: Any, op: Operation, exc: Exception,
                compensator: Any = None) -> None:
        if getattr(exc, 'touch_nothing', False):
            self._outcomes.finish(ctxt, op, 'failed', exc)
            return
        undo_failed, finished = op.undo(compensator or self._compensator(ctxt))
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
        releases it. The undo, run under the operation's locks, checks it is this cast's
        (attachworker.worker.undo), so a mismatched or live attachment is never touched.
        """
        attachment_id = getattr(req, 'attachment_id', None)
        if op.action != ATTACH or attachment_id is None:
            return None
        return op.arm('receive', ('release_attachment', {
            'attachment_id': attachment_id, 'volume_id': req.volume_id,
            'instance_uuid': req.instance_uuid, 'ours': False}))

    # --- the pipelines ------------------------------------------------------------------
    def _attach(self, ctxt: Any, req: validation.AttachRequest, op: Operation) -> None:
        attach_pipeline(self._conf, self._cinder, self._driver, self._connector, ctxt, req,
                        op, self._compensator(ctxt))

    def _detach(self, ctxt: Any, req: validation.DetachRequest, op: Operation) -> None:
        detach_pipeline(self._cinder, self._driver, self._connector, ctxt, req, op)

    # --- outcomes ----------------------------------------------------------------------
    def reject(self, ctxt: Any, method: str, exc: BaseException) -> None:
        """Not an RPC method (see RPC_METHODS): the dispatcher's hook for casts it
        could not deliver (unknown method or version, a context it cannot read)."""
        self._outcomes.reject(ctxt, self.RPC_METHODS.get(method), exc,
                              aw_delivery.current())

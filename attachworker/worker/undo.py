"""What each undo does, and in which order undos run: stated here, once.

The pipeline names the undo of a step when the step starts (``Operation.step``);
the journal stores that name and its arguments (ids, a mountpoint, a connector:
never a secret) in the same write as the step's start. Whoever runs the stack
afterwards, the pipeline after a failure or recovery after a crash, calls
:meth:`Compensator.run` with the stored name and arguments. Nothing else decides
which undo follows which step.

Two kinds of entry:

* ``undo``: reverses its step (``release_attachment`` reverses
  ``attachment_create``...).
* ``resume``: what would complete an attach whose driver had attached; only
  recovery with ``[worker] recovery_action = finish`` runs it, instead of undoing.
* ``finish``: once a detach reached the host, going back is not possible (the
  guest may have let go): the entry finishes the detach in Cinder instead, and it
  supersedes the undos below it. (So does a refresh once Cinder was asked to
  delete the old attachment: ``finish_refresh`` completes it.) A stack whose
  finish entries all succeeded means the operation is *completed*, not undone.

Order (:func:`order`): the host lets go first (``driver_detach``), then the other
entries run newest first. So Cinder is never told an attachment is gone while the
guest still has the disk.

Safety rules every undo keeps, whoever runs it, so that replaying a stack
twice or after a duplicate cast can do no harm:

* an attachment is deleted only if it belongs to the recorded volume and instance,
  and never while the host still has the volume attached to the instance;
* an ``attached`` attachment is deleted only by the operation that completed it;
* an unknown attachment (an ``attachment_create`` whose answer never came) is
  looked for among the instance's *reserved* attachments of the volume that no
  other running operation of this host holds.
"""
from typing import Any
from typing import Callable
from typing import Iterable
from typing import Optional

from oslo_log import log as logging

from attachworker import exception

LOG = logging.getLogger(__name__)

#: Entry kinds.
UNDO = 'undo'
FINISH = 'finish'
RESUME = 'resume'  # completes an attach; run only by recovery_action = finish
#: Undos that make the host let go: they run before every other entry.
HOST_FIRST = ('driver_detach',)


class HostStillAttached(exception.AttachWorkerException):
    """An undo would take from the guest a volume it still has."""

    msg_fmt = ('Volume %(volume_id)s is still attached to instance %(instance_uuid)s on '
               'this host: its Cinder attachment is kept until the host lets go')
    code = 409


def order(entries: Iterable[dict]) -> list:
    """The order a stack runs in: the host lets go first, then newest first."""
    return sorted(entries, key=lambda e: (e['name'] not in HOST_FIRST, -e['seq']))


def run_stack(entries: Iterable[dict], compensator: 'Compensator',
              ran: Callable[[dict, Optional[BaseException]], None]) -> tuple:
    """Run what is left of a stack; the pipeline and recovery both run it here.

    Entries still ``armed`` (or ``failed`` before) run in :func:`order`, except
    ``resume`` entries and those older than an armed ``finish`` entry (which
    supersedes them: the host may have let go). A failing entry does not stop
    the others. ``ran(entry, error)`` is told of each (to journal it). Returns
    ``(names of failed entries, finished)``: finished when finish entries ran
    and nothing failed, so the operation reached its end after all.
    """
    pending = [e for e in entries if e['state'] in ('armed', 'failed')
               and e['kind'] != RESUME]
    finish_from = max((e['seq'] for e in pending if e['kind'] == FINISH), default=None)
    if finish_from is not None:
        pending = [e for e in pending if e['seq'] >= finish_from]
    failed, finished = [], False
    for entry in order(pending):
        error: Optional[BaseException] = None
        try:
            compensator.run(entry['name'], entry['args'])
        except exception.VolumeNotFound:
            LOG.info('The volume is gone: %s has nothing to do', entry['name'])
        except Exception as exc:  # noqa: BLE001 - try every entry, report the rest
            error = exc
            LOG.error('Undo %(undo)s for volume %(volume)s failed: %(exc)s',
                      {'undo': entry['name'], 'volume': entry['args'].get('volume_id'),
                       'exc': exc})
        entry['state'] = 'failed' if error else 'done'
        if error:
            failed.append(entry['name'])
        elif entry['kind'] == FINISH:
            finished = True
        ran(entry, error)
    return failed, finished and not failed


class Compensator:
    """Runs stored entries against a Cinder client and the virt driver.

    ``cinder`` is a callable returning the client, asked for only when an entry
    needs Cinder (host undos still run when Cinder cannot be reached).
    ``protected`` returns the attachment ids other operations of this host still
    own (queued or running casts), which an undo never touches.
    """

    def __init__(self, cinder: Callable[[], Any], driver: Any, ctxt: Any,
                 protected: Optional[Callable[[], set]] = None) -> None:
        self._cinder_factory = cinder
        self._client: Any = None
        self._driver = driver
        self._ctxt = ctxt
        self._protected = protected or set

    @property
    def _cinder(self) -> Any:
        if self._client is None:
            self._client = self._cinder_factory()
        return self._client

    def run(self, name: str, args: dict) -> None:
        action = getattr(self, 'do_' + name, None)
        if action is None:
            raise exception.JournalError(reason='unknown undo %r in the journal' % name)
        action(**args)

    # --- the host ---------------------------------------------------------------------
    def _on_host(self, instance_uuid: str, volume_id: str) -> bool:
        return any(a['volume_id'] == volume_id
                   for a in self._driver.get_attachments(instance_uuid))

    def do_release_device(self, instance_uuid: str, volume_id: str) -> None:
        self._driver.release_device_name(instance_uuid, volume_id)

    def do_driver_detach(self, instance_uuid: str, volume_id: str,
                         mountpoint: Optional[str],
                         attachment_id: Optional[str] = None) -> None:
        """The host lets go, unless what it holds now is another attachment (a later
        attach of the same volume): an old stack never takes a newer disk away."""
        for held in self._driver.get_attachments(instance_uuid):
            if (held['volume_id'] == volume_id and attachment_id
                    and held.get('attachment_id') not in (None, attachment_id)):
                LOG.info('Volume %s is attached to %s again, as attachment %s (not %s): '
                         'left alone', volume_id, instance_uuid, held['attachment_id'],
                         attachment_id)
                return
        self._driver.detach_volume(self._ctxt, {'uuid': instance_uuid}, mountpoint,
                                   volume_id)

    # --- attachments flow -----------------------------------------------------------
    def do_release_attachment(self, attachment_id: Optional[str], volume_id: str,
                              instance_uuid: str, ours: bool) -> None:
        """Delete the attachment this operation made or was given, if it is still ours.

        ``ours``: only this operation can have completed it (it made the attachment,
        or sent attachment_complete itself); an ``attached`` attachment that is not
        ours is someone's live attachment and is kept. ``attachment_id`` None: the
        create's answer never came; the candidates are the instance's unattached
        attachments of the volume not in ``known`` (those that existed before the
        create) and not owned by another operation.
        """
        if attachment_id is None:
            self._release_unknown(volume_id, instance_uuid)
            return
        try:
            att = self._cinder.attachment_get(attachment_id)
        except exception.AttachmentNotFound:
            LOG.info('Attachment %s is already gone', attachment_id)
            return
        if att.get('volume_id') != volume_id or att.get('instance') != instance_uuid:
            LOG.warning('Attachment %(att)s belongs to volume %(vol)s and instance %(inst)s, '
                        'not to this operation: not touched',
                        {'att': attachment_id, 'vol': att.get('volume_id'),
                         'inst': att.get('instance')})
            return
        attached = att.get('status') == 'attached'
        if attached and not ours:
            LOG.info('Attachment %s is attached, and not by this operation: kept',
                     attachment_id)
            return
        # A reserved attachment (no connector yet) is never the one a guest uses.
        if att.get('status') != 'reserved' and self._on_host(instance_uuid, volume_id):
            raise HostStillAttached(volume_id=volume_id, instance_uuid=instance_uuid)
        self._cinder.attachment_delete(attachment_id)

    def _release_unknown(self, volume_id: str, instance_uuid: str) -> None:
        protected = self._protected()
        for att in self._cinder.attachments_of(volume_id):
            if (att['instance'] == instance_uuid and att['status'] == 'reserved'
                    and att['id'] not in protected):
                self._cinder.attachment_delete(att['id'])

    # --- legacy flow ------------------------------------------------------------------
    def do_unreserve(self, volume_id: str) -> None:
        self._cinder.unreserve(volume_id)

    def do_terminate_connection(self, volume_id: str, connector: dict) -> None:
        self._cinder.terminate_connection(volume_id, connector)

    def do_legacy_detach(self, volume_id: str, instance_uuid: str) -> None:
        if self._on_host(instance_uuid, volume_id):
            raise HostStillAttached(volume_id=volume_id, instance_uuid=instance_uuid)
        self._cinder.detach_instance(volume_id, instance_uuid)

    def do_roll_detaching(self, volume_id: str) -> None:
        self._cinder.roll_detaching(volume_id)

    # --- completing an attach (recovery_action = finish) ---------------------------------
    def do_complete_attachment(self, attachment_id: str) -> None:
        self._cinder.attachment_complete(attachment_id)

    def do_legacy_attach(self, volume_id: str, instance_uuid: str, mountpoint: str,
                         mode: str, host_name: Optional[str]) -> None:
        self._cinder.attach(volume_id, instance_uuid, mountpoint, mode, host_name)

    # --- finishing a detach the host had begun ---------------------------------------------
    def do_finish_detach(self, instance_uuid: str, volume_id: str, mountpoint: Optional[str],
                         attachment_id: Optional[str], flow: str, connector: dict) -> None:
        self.do_driver_detach(instance_uuid, volume_id, mountpoint, attachment_id)
        if attachment_id is None:
            return
        try:
            if flow == 'legacy':
                self._cinder.terminate_connection(volume_id, connector)
                self._cinder.detach(volume_id, attachment_id)
            else:
                self._cinder.attachment_delete(attachment_id)
        except exception.VolumeNotFound:
            LOG.info('Volume %s is gone: the detach is complete', volume_id)

    # --- finishing a refresh whose old attachment is gone --------------------------------
    def do_finish_refresh(self, instance_uuid: str, volume_id: str, attachment_id: str,
                          old_attachment_id: Optional[str], mountpoint: str,
                          connector: dict, record: dict) -> None:
        """The rest of attachworker.refresh from its ``attachment_delete`` on: each
        call is safe to repeat (a deleted attachment counts as gone, an update and a
        complete may be sent again, the driver's refresh does nothing more). Should the
        host have let go of the volume meanwhile (a detach), the new attachment is not
        wanted any more: it is released instead, unless attached."""
        if old_attachment_id and old_attachment_id != attachment_id:
            self._cinder.attachment_delete(old_attachment_id)
        if not self._on_host(instance_uuid, volume_id):
            LOG.info('Volume %s left instance %s meanwhile: its refresh ends by releasing '
                     'attachment %s', volume_id, instance_uuid, attachment_id)
            self.do_release_attachment(attachment_id, volume_id, instance_uuid, ours=False)
            return
        info = self._cinder.attachment_update(attachment_id, connector, mountpoint)
        self._driver.refresh_connection(self._ctxt, info, {'uuid': instance_uuid},
                                        mountpoint, volume_id,
                                        dict(record, attachment_id=attachment_id))
        self._cinder.attachment_complete(attachment_id)

"""The checks of the pipeline: each refuses, before anything changes, a cast that
cannot be carried out. Every refusal is a definite error (``expected``): nothing
was done, so nothing is undone because of it."""
from typing import Any
from typing import Optional

from oslo_log import log as logging

from attachworker import exception

LOG = logging.getLogger(__name__)


class NotTrusted(exception.AttachWorkerException):
    """A cast with no caller token for a volume its instance's project does not own."""

    msg_fmt = ('Refused: the cast carries no caller token, and volume %(volume_id)s '
               'is not owned by the project of instance %(instance_uuid)s (%(reason)s)')
    code = 403
    expected = True
    #: Not even the cast's own reservation is touched.
    touch_nothing = True


def trusted(ctxt: Any, volume: dict, instance: dict, volume_id: str) -> None:
    """A cast with the caller's token is judged by Cinder. One without acts with the
    service credentials: it must name an instance whose project owns the volume."""
    if ctxt.auth_token:
        return
    project = instance.get('project_id')
    if not project:
        reason = 'the instance has no project_id'
    elif not volume.get('project_id'):
        reason = "the volume's project is not visible to the [cinder] user"
    elif volume['project_id'] != project:
        reason = 'the volume belongs to another project'
    else:
        return
    raise NotTrusted(volume_id=volume_id, instance_uuid=instance['uuid'], reason=reason)


def controller_attachment(cinder: Any, req: Any) -> dict:
    """The attachment the controller reserved must be this cast's volume and instance."""
    att = cinder.attachment_get(req.attachment_id)
    if att.get('volume_id') != req.volume_id or att.get('instance') != req.instance_uuid:
        raise exception.InvalidInput(
            reason='attachment %s is for volume %s and instance %s, not for this cast'
            % (req.attachment_id, att.get('volume_id'), att.get('instance')))
    return att


def can_attach(conf: Any, driver: Any, cinder: Any, volume: dict, req: Any,
               flow: str) -> None:
    """Refuse, before any change in Cinder, a volume that cannot be attached."""
    def refuse(reason: str) -> None:
        raise exception.InvalidVolume(volume_id=req.volume_id, reason=reason)

    if req.mode == 'ro' and flow == 'attachments' and not cinder.honours_mode:
        raise exception.InvalidInput(
            reason='mode ro needs Cinder microversion 3.54 for the attachments flow; '
                   'Cinder offers %s, so the volume would be attached read-write'
                   % cinder.version.get_string())
    status = volume['status']
    allowed = {'reserved'} if req.attachment_id else {'available'}
    if volume['multiattach']:
        if not driver.capabilities.get('supports_multiattach'):
            refuse('it is multiattach and the virt driver cannot share volumes')
        allowed.add('in-use')
    if status not in allowed:
        hint = '' if volume['multiattach'] or status != 'in-use' else \
            ' (attached elsewhere and not multiattach)'
        refuse('its status is %s, expected %s%s'
               % (status, ' or '.join(sorted(allowed)), hint))
    instance_az = req.instance.get('availability_zone')
    if (not conf.cinder.cross_az_attach and instance_az
            and volume['availability_zone'] != instance_az):
        refuse('it is in availability zone %s and the instance in %s, and '
               '[cinder] cross_az_attach is false'
               % (volume['availability_zone'], instance_az))


def legacy_attachment_id(cinder: Any, req: Any) -> Optional[str]:
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

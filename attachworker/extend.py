"""The extend pipeline: Cinder extended an attached volume, the guest's disk follows.

What Nova's compute manager does for Cinder's ``volume-extended`` external event
(``extend_volume``: read the volume, hand ``size`` GiB in bytes to the virt driver):

1. the virt driver must be able to resize an attached volume's disk
   (``supports_extend_volume``), else nothing is asked of Cinder;
2. get the volume: its ``size`` is the new size. The cast's ``new_size`` is the
   caller's word only, and a difference is logged;
3. the volume must be attached to the instance on this host (the driver's record)
   and ``in-use`` in Cinder with an attachment for the instance;
4. the driver resizes the disk: one step, committed with its own record.

No step has an undo: Cinder's extend is done (and is not ours to revert), and a
grown disk is not shrunk back. A failure ends ``.error`` with the volume extended
in Cinder and the guest perhaps still seeing the old size, as with Nova (which
logs it); the same cast again is harmless (an equal size does nothing). A kill -9
during the driver step is resolved by recovery: nothing to undo, nothing run again,
``.error`` with fault step ``recovery``.
"""
from typing import Any

from oslo_log import log as logging

from attachworker import checks
from attachworker import exception

LOG = logging.getLogger(__name__)

GiB = 1024 ** 3


def driver_supports(driver: Any, volume_id: str) -> None:
    if not driver.capabilities.get('supports_extend_volume'):
        raise exception.ExtendVolumeNotSupported(
            volume_id=volume_id, reason='[virt] driver %s cannot resize an attached '
            "volume's disk" % type(driver).__name__)


def can_extend(driver: Any, volume: dict, req: Any) -> tuple:
    """(the host's attachment, Cinder's attachment, Cinder's size in GiB), or refused."""
    def refuse(reason: str) -> None:
        raise exception.VolumeNotExtendable(volume_id=req.volume_id, reason=reason)

    on_host = next((a for a in driver.get_attachments(req.instance_uuid)
                    if a['volume_id'] == req.volume_id), None)
    if on_host is None:
        refuse('it is not attached to instance %s on this host' % req.instance_uuid)
    if volume['status'] != 'in-use':
        refuse('its status in Cinder is %s, expected in-use' % volume['status'])
    attached = next((a for a in volume['attachments']
                     if a.get('server_id') == req.instance_uuid), None)
    if attached is None:
        refuse('Cinder shows no attachment of it to instance %s' % req.instance_uuid)
    size = volume.get('size')
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise exception.CinderError(reason='Cinder reports no usable size for volume %s: '
                                    '%r' % (req.volume_id, size))
    return on_host, attached, size


def extend_pipeline(cinder_api: Any, driver: Any, ctxt: Any, req: Any, op: Any) -> None:
    op.step('check_driver', driver_supports, driver, req.volume_id)
    cinder = op.step('cinder_client', cinder_api.client, ctxt)
    volume = op.step('get_volume', cinder.get, req.volume_id)
    checks.trusted(ctxt, volume, req.instance, req.volume_id)
    on_host, attached, size = op.step('check_extend', can_extend, driver, volume, req)
    op.update(attachment_id=attached.get('attachment_id'), mountpoint=on_host['mountpoint'],
              flow=on_host.get('flow'), mode=on_host.get('mode'),
              driver_volume_type=on_host.get('driver_volume_type'), new_size=size)
    if req.new_size is not None and req.new_size != size:
        LOG.warning('The cast says volume %(vol)s is %(cast)d GiB, Cinder says %(size)d GiB: '
                    "extending to Cinder's size", {'vol': req.volume_id,
                                                   'cast': req.new_size, 'size': size})
    old = op.step('driver_extend', driver.extend_volume, ctxt, None, req.instance,
                  req.volume_id, size * GiB, commit=True)
    # what the host had, in GiB (rounded up) as new_size; None when the driver cannot tell
    op.update(old_size=None if old is None else -(-old // GiB))

"""Device names reserved ahead of an attach (``reserve_block_device_name``), and
their expiry. The names are the virt driver's; this module adds the rules: one
reservation per volume and instance, none for a volume already attached, none that
outlives ``[worker] reservation_timeout`` unused."""
import time
from typing import Any

from oslo_log import log as logging

from attachworker import exception
from attachworker.worker import locks

LOG = logging.getLogger(__name__)


def reserve(conf: Any, driver: Any, req: Any) -> str:
    """Reserve and return the device for ``req`` (a validation.ReserveRequest)."""
    if req.multiattach and not driver.capabilities.get('supports_multiattach'):
        raise exception.MultiattachNotSupported()
    with locks.instance_lock(conf.state_path, req.instance_uuid):
        for held in driver.get_attachments(req.instance_uuid):
            if held['volume_id'] == req.volume_id:
                raise exception.VolumeAlreadyAttached(
                    volume_id=req.volume_id, how='attached to',
                    instance_uuid=req.instance_uuid, device=held['mountpoint'])
        for held in driver.reservations():
            if (held['instance_uuid'], held['volume_id']) == (req.instance_uuid,
                                                              req.volume_id):
                raise exception.VolumeAlreadyAttached(
                    volume_id=req.volume_id, how='reserved for',
                    instance_uuid=req.instance_uuid, device=held['device'])
        name = driver.reserve_device_name(req.instance_uuid, req.volume_id, req.device)
    LOG.info('Reserved %(dev)s on instance %(inst)s for volume %(vol)s',
             {'dev': name, 'inst': req.instance_uuid, 'vol': req.volume_id})
    return name


def expire(conf: Any, driver: Any) -> int:
    """Release the reservations older than ``[worker] reservation_timeout``."""
    deadline = time.time() - conf.worker.reservation_timeout
    released = 0
    for held in driver.reservations():
        if held['reserved_at'] >= deadline:
            continue
        with locks.instance_lock(conf.state_path, held['instance_uuid']):
            if any(r == held for r in driver.reservations()):  # still unused
                driver.release_device_name(held['instance_uuid'], held['volume_id'])
                released += 1
                LOG.info('Released %(dev)s of instance %(inst)s: no attach of volume '
                         '%(vol)s used it within %(timeout)d s',
                         {'dev': held['device'], 'inst': held['instance_uuid'],
                          'vol': held['volume_id'],
                          'timeout': conf.worker.reservation_timeout})
    return released

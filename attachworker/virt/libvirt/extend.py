"""Growing an attached volume's disk in the guest, after Cinder extended the volume.

What Nova's libvirt driver does for the ``volume-extended`` event: the running
guest's disk is resized with ``virDomainBlockResize(target, bytes,
VIR_DOMAIN_BLOCK_RESIZE_BYTES)``, QEMU's ``block_resize``. For an RBD disk QEMU
opens the image itself and keeps the size it read when it opened it, so until then
the guest still sees the old size; ``block_resize`` makes QEMU resize the image (to
the size Cinder already gave it: nothing changes in Ceph) and tell the guest.

A stopped guest needs nothing: QEMU reads the image's size when it starts. Block
disks (iSCSI, FC) would need the host device rescanned first (os-brick's
``extend_volume``), which this driver does not do yet: refused, nothing changed.
"""
from typing import Optional

from oslo_log import log as logging

from attachworker import exception
from attachworker.virt.libvirt import disk
from attachworker.virt.libvirt import guest as guest_mod

LOG = logging.getLogger(__name__)


def extend(guest: guest_mod.Guest, volume_id: str, new_size: int) -> Optional[int]:
    """Resize the volume's disk of the running ``guest`` to ``new_size`` bytes; the
    size it had before (None for a stopped guest, which needs nothing)."""
    live, config = guest.xmls()
    found = disk.by_serial(live, volume_id)
    if found is None:
        if live is None and disk.by_serial(config, volume_id) is not None:
            LOG.info('Instance %(inst)s is not running: its disk of volume %(vol)s will have '
                     'the new size when it starts', {'inst': guest.uuid, 'vol': volume_id})
            return None
        raise exception.VolumeNotExtendable(
            volume_id=volume_id, reason='instance %s has no such disk%s' % (
                guest.uuid, ' in the running guest' if live else ''))
    if found.protocol not in disk.NETWORK_TYPES:
        raise exception.ExtendVolumeNotSupported(
            volume_id=volume_id,
            reason='its disk %s is a %s disk: the host device would have to be rescanned '
                   'first (os-brick), which the libvirt driver does not do yet'
                   % (found.target, found.protocol or found.source_type or 'local'))
    old = guest.block_size(found.target)
    if new_size < old:
        raise exception.VolumeNotExtendable(
            volume_id=volume_id, reason='disk %s of instance %s has %d bytes already; %d '
            'would shrink it' % (found.target, guest.uuid, old, new_size))
    if new_size == old:
        LOG.info('Disk %(dev)s (volume %(vol)s) of instance %(inst)s has %(size)d bytes '
                 'already', {'dev': found.target, 'vol': volume_id, 'inst': guest.uuid,
                             'size': old})
        return old
    guest.block_resize(found.target, new_size)
    now = guest.block_size(found.target)
    if now != new_size:
        LOG.warning('Disk %(dev)s of instance %(inst)s has %(now)d bytes after the resize '
                    'to %(size)d', {'dev': found.target, 'inst': guest.uuid, 'now': now,
                                    'size': new_size})
    LOG.info('Extended disk %(dev)s (volume %(vol)s) of instance %(inst)s from %(old)d to '
             '%(size)d bytes', {'dev': found.target, 'vol': volume_id, 'inst': guest.uuid,
                                'old': old, 'size': now})
    return old

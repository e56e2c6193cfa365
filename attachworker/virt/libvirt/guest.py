"""One domain: its XML, device attach, and detach with the wait for the guest.

A live detach is only a request to the guest (virtio-blk needs its ACPI
cooperation; virtio-scsi is unplugged by QEMU alone), answered by libvirt's
device-removed event. As Nova does since bug 1882521, the driver registers its
interest before the request, waits up to ``[libvirt] device_detach_timeout`` for
the event, reads the live XML, and asks again while the disk is still there, up
to ``device_detach_attempts`` times. A device-removal-failed event is final.
"""
from typing import Any
from typing import Optional

from oslo_log import log as logging

from attachworker import exception
from attachworker.virt.libvirt import disk
from attachworker.virt.libvirt import errors
from attachworker.virt.libvirt import host as host_mod
from attachworker.virt.libvirt import records

LOG = logging.getLogger(__name__)


class Guest:
    def __init__(self, host: host_mod.Host, dom: Any, instance_uuid: str) -> None:
        self.host = host
        self.dom = dom
        self.uuid = instance_uuid

    def _call(self, action: str) -> Any:
        return self.host.call('%s (instance %s)' % (action, self.uuid))

    def active(self) -> bool:
        with self._call('read the state of the domain'):
            return bool(self.dom.isActive())

    def persistent(self) -> bool:
        with self._call('read the state of the domain'):
            return bool(self.dom.isPersistent())

    def xml(self, inactive: bool = False, secure: bool = False) -> str:
        """The running guest's XML (of a stopped one: its definition), or with
        ``inactive`` the persistent definition; ``secure``: with its secrets (console
        passwords), for a definition that is written back whole; never log it."""
        libvirt = host_mod.libvirt
        flags = (libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0) | (
            libvirt.VIR_DOMAIN_XML_SECURE if secure else 0)
        with self._call('read the domain XML'):
            return self.dom.XMLDesc(flags)

    def xmls(self) -> tuple:
        """(XML of the running guest or None, persistent definition or None)."""
        live = self.xml() if self.active() else None
        config = self.xml(inactive=True) if self.persistent() else None
        return live, config

    def flags(self) -> int:
        with self._call('read the state of the domain'):
            return records.flags(self.dom)

    def attach(self, disk_xml: str) -> None:
        with self._call('attach the disk'):
            self.dom.attachDeviceFlags(disk_xml, records.flags(self.dom))

    def attach_new(self, volume_id: str, disk_xml: str) -> None:
        """Attach a disk the domain does not have; a failure is definite when libvirt
        answered and neither XML has the disk (nothing to undo in the guest)."""
        try:
            self.attach(disk_xml)
        except errors.LibvirtCallFailed as exc:
            if host_mod.connection_lost(exc.__cause__):
                raise  # libvirtd may still be doing it: ambiguous
            try:
                live, config = self.xmls()
            except exception.AttachWorkerException:
                raise exc from None  # cannot tell what libvirt did
            if not (disk.by_serial(live, volume_id) or disk.by_serial(config, volume_id)):
                raise errors.definite(exc) from exc.__cause__
            raise

    def drop_stale_records(self, reservations: Any) -> None:
        """Drop the records whose disk is gone, but those with a host connection left
        for detach_volume to undo. Best effort: a failure only postpones it."""
        try:
            with reservations.locked(self.uuid):
                live, config = self.xmls()
                recs = self.records()
                stale = [vol for vol, rec in recs.items()
                         if not (disk.by_serial(live, vol) or disk.by_serial(config, vol))
                         and not (rec.get('connection') or {}).get('device_info')]
                if stale:
                    self.write_records({v: r for v, r in recs.items() if v not in stale})
                    LOG.info('Dropped the records of volumes %(vols)s: instance %(inst)s has '
                             'no such disk', {'vols': ', '.join(sorted(stale)),
                                              'inst': self.uuid})
        except exception.AttachWorkerException as exc:
            LOG.warning('Could not drop stale records of instance %s: %s', self.uuid, exc)

    def define(self, domain_xml: str) -> None:
        """Replace the persistent definition (of a stopped domain) in one call."""
        with self._call('define the domain'):
            self.dom.connect().defineXML(domain_xml)

    def block_size(self, target: str) -> int:
        """The capacity of disk ``target`` (``sdb``) as QEMU sees it now, in bytes."""
        with self._call('read the size of disk %s' % target):
            return int(self.dom.blockInfo(target)[0])

    def block_resize(self, target: str, size: int) -> None:
        """Make the running guest's disk ``target`` ``size`` bytes (QEMU's
        block_resize: for RBD it also resizes the image, to the size Cinder gave it)."""
        with self._call('resize disk %s to %d bytes' % (target, size)):
            self.dom.blockResize(target, size, host_mod.libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)

    def records(self) -> dict:
        with self._call('read the attachworker metadata'):
            return records.read(self.dom)

    def write_records(self, recs: dict) -> None:
        """setMetadata replaces the element: idempotent, so tried twice."""
        for attempt in (1, 2):
            try:
                with self._call('write the attachworker metadata'):
                    records.write(self.dom, recs)
                return
            except errors.LibvirtCallFailed as exc:
                if attempt == 2 or not host_mod.connection_lost(exc.__cause__):
                    raise
                self.dom = self.host.require_domain(self.uuid)

    def detach_config(self, found: disk.Disk) -> None:
        libvirt = host_mod.libvirt
        try:
            with self._call('detach the disk from the persistent definition'):
                try:
                    self.dom.detachDeviceFlags(found.xml, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
                except libvirt.libvirtError as exc:
                    if not _missing(exc):
                        raise
        except errors.LibvirtCallFailed:
            LOG.error('Disk %(dev)s left the running guest of instance %(inst)s but libvirt '
                      'did not remove it from the persistent definition',
                      {'dev': found.target, 'inst': self.uuid})
            raise

    def detach_live(self, volume_id: str, found: disk.Disk, attempts: int,
                    timeout: float) -> None:
        """Ask the running guest to let go of the disk until it is gone from the live
        XML; DeviceDetachFailed when it never is, or libvirt says it failed."""
        events = self.host.events
        current: Optional[disk.Disk] = found
        for attempt in range(1, attempts + 1):
            alias = current.alias or disk.alias_for(volume_id)
            waiter = events.waiter(self.uuid, alias)
            LOG.debug('(%(n)d/%(max)d) detaching %(dev)s (alias %(alias)s) of instance '
                      '%(inst)s from the running guest', {'n': attempt, 'max': attempts,
                                                         'dev': current.target,
                                                         'alias': alias, 'inst': self.uuid})
            if not self._request_live_detach(current, waiter):
                return  # libvirt says it is gone already
            result = events.wait(waiter, timeout)
            if result == host_mod.REMOVAL_FAILED:
                raise errors.DeviceDetachFailed(
                    volume_id=volume_id, instance_uuid=self.uuid,
                    reason='libvirt reported that removing %s failed (device-removal-failed '
                           'event); the disk stays attached' % current.target)
            if not self.active():
                return  # the guest stopped: nothing is live any more
            current = disk.by_serial(self.xml(), volume_id)
            if current is None:
                return
            if result is None:
                LOG.warning('(%(n)d/%(max)d) instance %(inst)s still has %(dev)s %(t)s s after '
                            'the detach request (no device-removed event)',
                            {'n': attempt, 'max': attempts, 'inst': self.uuid,
                             'dev': current.target, 't': timeout})
        raise errors.DeviceDetachFailed(
            volume_id=volume_id, instance_uuid=self.uuid,
            reason='the guest did not release %s after %d detach requests, %s s apart; the '
                   'disk stays attached' % (current.target, attempts, timeout))

    def _request_live_detach(self, current: disk.Disk, waiter: host_mod.Waiter) -> bool:
        """Send one live detach; False when libvirt says the device is gone already."""
        libvirt = host_mod.libvirt
        try:
            self.dom.detachDeviceFlags(current.xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            return True
        except libvirt.libvirtError as exc:
            message = host_mod.error_text(exc)
            if (exc.get_error_code() == libvirt.VIR_ERR_INTERNAL_ERROR
                    and 'already in the process of unplug' in message):
                return True  # an earlier request is still pending: wait for its event
            self.host.events.cancel(waiter)
            if _missing(exc) or exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return False
            with self._call('detach the disk from the running guest'):
                raise


def _missing(exc: Any) -> bool:
    libvirt = host_mod.libvirt
    code = exc.get_error_code()
    return (code == libvirt.VIR_ERR_DEVICE_MISSING
            or (code == libvirt.VIR_ERR_OPERATION_FAILED
                and 'not found' in host_mod.error_text(exc)))

"""``[virt] driver = libvirt``: volumes as disks of libvirt domains.

An instance is the domain whose UUID is the instance UUID. A volume is the disk
whose ``<serial>`` is the volume id; the live XML says what is attached (a disk
only in the persistent definition is not attached to the running guest). How each
was attached (the ``record``) is kept in the domain's metadata (``records``),
device reservations in small files under ``state_path`` (``naming``).

Failures are VirtDriverError; those marked ``expected`` are definite: the driver
checked that nothing changed (see ``errors``).
"""
import datetime
from typing import Any
from typing import Optional

from oslo_config import cfg
from oslo_log import log as logging
from oslo_utils import uuidutils

from attachworker import exception
from attachworker.virt import driver
from attachworker.virt.libvirt import brick
from attachworker.virt.libvirt import disk
from attachworker.virt.libvirt import errors
from attachworker.virt.libvirt import extend
from attachworker.virt.libvirt import guest as guest_mod
from attachworker.virt.libvirt import host as host_mod
from attachworker.virt.libvirt import naming
from attachworker.virt.libvirt import records
from attachworker.virt.libvirt import refresh

LOG = logging.getLogger(__name__)


class LibvirtDriver(driver.VirtDriver):
    capabilities = {'supports_multiattach': True,    # <shareable/> disks
                    'supports_device_naming': True,  # from the guest's own XML
                    'supports_extend_volume': True,   # RBD disks of running guests
                    'supports_refresh_connection': True}  # RBD disks of stopped guests

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        self.host = host_mod.Host(conf.libvirt.connection_uri)
        self._reservations = naming.Reservations(conf.state_path)

    # --- for operators and integration tests ------------------------------------------

    def domain_xml(self, instance_uuid: str, inactive: bool = False) -> str:
        """The domain's live XML (``inactive``: its persistent definition)."""
        return self._guest(instance_uuid).xml(inactive=inactive)

    def disk_xml(self, instance_uuid: str, volume_id: str) -> Optional[str]:
        """The volume's ``<disk>`` in the live XML, or None."""
        found = disk.by_serial(self.domain_xml(instance_uuid), volume_id)
        return found.xml if found else None

    def attachment_records(self, instance_uuid: str) -> dict:
        """The records of the domain's metadata, {volume id: record}."""
        return self._guest(instance_uuid).records()

    # --- helpers ------------------------------------------------------------------------

    def _guest(self, instance_uuid: str) -> guest_mod.Guest:
        return guest_mod.Guest(self.host, self.host.require_domain(instance_uuid),
                               instance_uuid)

    def _bus(self) -> str:
        return self.conf.libvirt.disk_bus

    def _present(self, guest: guest_mod.Guest, volume_id: str, target: str) -> Optional[Any]:
        """The volume's disk when it is at ``target`` already; raise when it is
        elsewhere or something else holds ``target`` (call locked)."""
        live, config = guest.xmls()
        mine = disk.by_serial(live, volume_id) if live else disk.by_serial(config, volume_id)
        if mine is not None:
            if mine.target == target:
                return mine
            raise errors.VolumeAttachedElsewhere(volume_id=volume_id, instance_uuid=guest.uuid,
                                                 device=mine.mountpoint)
        if live and disk.by_serial(config, volume_id):
            raise errors.definite(exception.VirtDriverError(
                reason='volume %s is in the persistent definition of instance %s but not in '
                       'the running guest: detach it first' % (volume_id, guest.uuid)))
        taken = disk.by_target(live, target) or disk.by_target(config, target)
        holder = naming.holder(self._reservations.load(guest.uuid), '/dev/' + target)
        if taken is not None or holder not in (None, volume_id):
            raise exception.DeviceInUse(mountpoint='/dev/' + target, instance_uuid=guest.uuid)
        return None

    # --- attach -------------------------------------------------------------------------

    def attach_volume(self, context: Any, connection_info: dict, instance: dict,
                      mountpoint: str, volume_id: str, record: Optional[dict] = None) -> None:
        record = record or {}
        instance_uuid = instance['uuid']
        if not isinstance(connection_info, dict):
            raise errors.UnsupportedVolume(volume_id=volume_id, reason='no connection info')
        LOG.debug('Attaching volume %(vol)s to instance %(inst)s at %(mp)s with %(info)s',
                  {'vol': volume_id, 'inst': instance_uuid, 'mp': mountpoint,
                   'info': records.masked(connection_info)})
        kind = connection_info.get('driver_volume_type')
        target = disk.target_of(mountpoint)
        access_mode = disk.access_mode(connection_info, volume_id)
        mode = 'ro' if 'ro' in (record.get('mode'), access_mode) else 'rw'
        spec = disk.Spec(volume_id=volume_id, target=target, bus=self._bus(),
                         readonly=mode == 'ro',
                         shareable=disk.multiattach(connection_info, record),
                         rbd_user=self.conf.libvirt.rbd_user,
                         rbd_secret_uuid=self.conf.libvirt.rbd_secret_uuid,
                         device_path='/dev/null')  # a dry run: refuse bad info early
        disk.build(connection_info, spec)
        if not target.startswith(disk.BUS_PREFIX[self._bus()]):
            LOG.warning('%(mp)s is attached on the %(bus)s bus: the guest may name it '
                        'differently', {'mp': mountpoint, 'bus': self._bus()})
        keep = dict(record, mountpoint=mountpoint, mode=mode, access_mode=access_mode,
                    driver_volume_type=kind,
                    multiattach=disk.multiattach(connection_info, record))
        multipath = self.conf.connector.use_multipath
        guest = self._guest(instance_uuid)
        with self._reservations.locked(instance_uuid):
            present = self._present(guest, volume_id, target)
            if present is not None:
                # a repeated attach; a crash may have lost the record: write it again
                device_info = ({'type': 'block', 'path': present.source}
                               if kind in disk.BLOCK_TYPES else None)
                self._keep(guest, volume_id, keep, records.connection_identity(
                    connection_info, device_info, multipath), only_if_missing=True)
                LOG.info('Volume %(vol)s is already attached to instance %(inst)s at %(mp)s',
                         {'vol': volume_id, 'inst': instance_uuid, 'mp': mountpoint})
                return
        device_info = None
        if kind in disk.BLOCK_TYPES:
            device_info = brick.connect(kind, connection_info, volume_id, multipath)
        spec.device_path = (device_info or {}).get('path')
        identity = records.connection_identity(connection_info, device_info, multipath)
        try:
            with self._reservations.locked(instance_uuid):
                if self._present(guest, volume_id, target) is not None:
                    return  # attached by another worker meanwhile: its connection, too
                guest.attach_new(volume_id, disk.build(connection_info, spec))
                self._keep(guest, volume_id, keep, identity)
        except Exception as exc:
            if device_info is not None and getattr(exc, 'expected', False):
                self._undo_connect(kind, identity, volume_id, exc)
            raise
        LOG.info('Attached volume %(vol)s to instance %(inst)s at %(mp)s (%(kind)s, %(mode)s)',
                 {'vol': volume_id, 'inst': instance_uuid, 'mp': mountpoint, 'kind': kind,
                  'mode': mode})

    def _undo_connect(self, kind: str, identity: dict, volume_id: str, exc: Any) -> None:
        """Nothing reached the guest: the host connection made for it goes too. If it
        cannot, the failure is no longer definite."""
        try:
            brick.disconnect(self.host, kind, identity, volume_id)
        except exception.AttachWorkerException as undo:
            LOG.error('Could not undo the host connection of volume %(vol)s: %(err)s',
                      {'vol': volume_id, 'err': undo})
            exc.expected = False

    def _keep(self, guest: guest_mod.Guest, volume_id: str, keep: dict, identity: dict,
              only_if_missing: bool = False) -> None:
        """Write the volume's record, then drop its reservation (call locked)."""
        recs = guest.records()
        if not (only_if_missing and volume_id in recs):
            recs[volume_id] = dict(
                {f: keep.get(f) for f in records.FIELDS}, connection=identity,
                attached_at=datetime.datetime.now(datetime.timezone.utc).isoformat())
            guest.write_records(recs)
        self._reservations.drop(guest.uuid, volume_id)

    # --- detach -------------------------------------------------------------------------

    def detach_volume(self, context: Any, instance: dict, mountpoint: Optional[str],
                      volume_id: str) -> None:
        instance_uuid = instance['uuid']
        dom = self.host.domain(instance_uuid)
        if dom is None:
            LOG.warning('Instance %s has no domain on this host: volume %s is not attached',
                        instance_uuid, volume_id)
            self.release_device_name(instance_uuid, volume_id)
            return
        guest = guest_mod.Guest(self.host, dom, instance_uuid)
        live, config = guest.xmls()
        live_disk = disk.by_serial(live, volume_id)
        config_disk = disk.by_serial(config, volume_id)
        found = live_disk or config_disk
        if found is not None:
            if mountpoint and mountpoint != found.mountpoint:
                LOG.warning('Volume %(vol)s is attached at %(real)s, not %(mp)s',
                            {'vol': volume_id, 'real': found.mountpoint, 'mp': mountpoint})
            # The running guest first: when it keeps the disk, the domain is exactly
            # as it was (the definition still has the disk too).
            if live_disk is not None:
                guest.detach_live(volume_id, live_disk,
                                  self.conf.libvirt.device_detach_attempts,
                                  self.conf.libvirt.device_detach_timeout)
            if config_disk is not None:
                guest.detach_config(config_disk)
            LOG.info('Detached volume %(vol)s from instance %(inst)s at %(mp)s',
                     {'vol': volume_id, 'inst': instance_uuid, 'mp': found.mountpoint})
        self._forget(guest, volume_id, found is not None)

    def _forget(self, guest: guest_mod.Guest, volume_id: str, detached: bool) -> None:
        """The disk is gone: undo the host connection, then drop the record (a failed
        disconnect keeps it, so the next detach of the volume tries again)."""
        rec = guest.records().get(volume_id)
        if not detached and rec is None:
            LOG.info('Volume %(vol)s is not attached to instance %(inst)s: nothing to detach',
                     {'vol': volume_id, 'inst': guest.uuid})
        connection = (rec or {}).get('connection') or {}
        kind = (rec or {}).get('driver_volume_type')
        if kind in disk.BLOCK_TYPES and connection.get('device_info'):
            if not brick.disconnect(self.host, kind, connection, volume_id):
                LOG.info('Volume %s is attached to another instance of this host: its host '
                         'connection stays', volume_id)
        with self._reservations.locked(guest.uuid):
            live, config = guest.xmls()
            recs = guest.records()
            if volume_id in recs and not (disk.by_serial(live, volume_id)
                                          or disk.by_serial(config, volume_id)):
                del recs[volume_id]
                guest.write_records(recs)
            self._reservations.drop(guest.uuid, volume_id)

    # --- extend (attachworker.virt.libvirt.extend) ---------------------------------------

    def extend_volume(self, context: Any, connection_info: Optional[dict], instance: dict,
                      volume_id: str, new_size: int) -> Optional[int]:
        return extend.extend(self._guest(instance['uuid']), volume_id, new_size)

    # --- refresh (attachworker.virt.libvirt.refresh) --------------------------------------

    def instance_running(self, instance_uuid: str) -> Optional[bool]:
        return self._guest(instance_uuid).active()

    def check_refresh(self, instance_uuid: str, volume_id: str) -> None:
        refresh.check(self._guest(instance_uuid), volume_id)

    def refresh_connection(self, context: Any, connection_info: dict, instance: dict,
                           mountpoint: str, volume_id: str, record: dict) -> None:
        with self._reservations.locked(instance['uuid']):
            refresh.refresh(self._guest(instance['uuid']), self.conf.libvirt,
                            connection_info, mountpoint, volume_id, record)

    # --- what is attached ---------------------------------------------------------------

    def get_attachments(self, instance_uuid: str) -> list[dict]:
        dom = self.host.domain(instance_uuid)
        if dom is None:
            return []  # no domain here: nothing of it is attached on this host
        guest = guest_mod.Guest(self.host, dom, instance_uuid)
        live = guest.xml()
        recs = guest.records()
        found = []
        for item in disk.disks(live):
            if item.device not in ('disk', 'lun') or not uuidutils.is_uuid_like(item.serial):
                continue
            rec = recs.get(item.serial) or {}
            found.append({
                'volume_id': item.serial, 'mountpoint': item.mountpoint,
                'driver_volume_type': rec.get('driver_volume_type') or item.protocol,
                'access_mode': rec.get('access_mode') or ('ro' if item.readonly else 'rw'),
                'flow': rec.get('flow'), 'attachment_id': rec.get('attachment_id'),
                'mode': rec.get('mode'), 'attached_at': rec.get('attached_at')})
        if set(recs) - {a['volume_id'] for a in found}:
            guest.drop_stale_records(self._reservations)
        return sorted(found, key=lambda a: (len(a['mountpoint']), a['mountpoint']))

    # --- device names -------------------------------------------------------------------

    def reserve_device_name(self, instance_uuid: str, volume_id: str,
                            device: Optional[str] = None) -> str:
        target = disk.target_of(device) if device is not None else None
        guest = self._guest(instance_uuid)
        with self._reservations.locked(instance_uuid):
            live, config = guest.xmls()
            mine = disk.by_serial(live, volume_id) or disk.by_serial(config, volume_id)
            if mine is not None:
                return mine.mountpoint
            held = self._reservations.load(instance_uuid)
            if volume_id in held:
                return held[volume_id]['device']
            used = disk.targets(live, config) | {
                entry['device'].rsplit('/', 1)[-1] for entry in held.values()}
            if target is not None:
                if target in used:
                    raise exception.DeviceInUse(mountpoint=device, instance_uuid=instance_uuid)
                chosen = device
            else:
                name = naming.next_free(disk.BUS_PREFIX[self._bus()], used)
                if name is None:
                    raise errors.NoFreeDevice(instance_uuid=instance_uuid, bus=self._bus())
                chosen = '/dev/' + name
            self._reservations.add(instance_uuid, volume_id, chosen)
        return chosen

    def release_device_name(self, instance_uuid: str, volume_id: str) -> None:
        with self._reservations.locked(instance_uuid):
            self._reservations.drop(instance_uuid, volume_id)

    def reservations(self) -> list[dict]:
        return self._reservations.all()

"""A virt driver that records attachments instead of touching a hypervisor.

It behaves like a real one where the pipeline can tell (a device holds one volume,
re-attaching is harmless, names are handed out once) and keeps its records durable
(attachworker.virt.fake_store: a SQLite row per instance), so detach, device
naming and restarts work. An instance's record::

    {"attachments": {"b1204e0c-...": {"volume_id": "b1204e0c-...",
                                      "mountpoint": "/dev/vdb",
                                      "driver_volume_type": "iscsi",
                                      "access_mode": "rw", "mode": "rw",
                                      "flow": "attachments", "attachment_id": "5d77...",
                                      "attached_at": "2026-11-25T10:42:07+00:00",
                                      "size_bytes": 2147483648}},
     "reservations": {"5d77a1e2-...": "/dev/vdc"},
     "reserved_at": {"5d77a1e2-...": 1764580927.5}}

``size_bytes`` is the size the last ``extend_volume`` gave the disk (absent before
one). Only those fields are stored: ``connection_info['data']`` carries CHAP secrets.
Every change is a read-modify-write of its instance's row in one transaction, so the
worker's threads and other processes never overwrite each other's records.
"""
import datetime
import os
import re
import time
from typing import Any
from typing import Optional

from oslo_config import cfg
from oslo_log import log as logging
from oslo_utils import strutils

from attachworker import exception
from attachworker.virt import driver
from attachworker.virt import fake_store
from attachworker.virt import state_files

LOG = logging.getLogger(__name__)

KNOWN_VOLUME_TYPES = ('iscsi', 'fibre_channel', 'nvmeof', 'rbd', 'fake')
ROOT_DEVICE = '/dev/vda'
DEVICE_PREFIX = '/dev/vd'
# sdb, vdc, xvdd, vdaa...: whole disks only, nothing a path trick could escape with.
_DEVICE_RE = re.compile(r'^/dev/[a-z]*d[a-z]+$')


def _check_device(device: str) -> None:
    if not isinstance(device, str) or not _DEVICE_RE.match(device):
        raise exception.InvalidInput(reason='bad device name %r' % (device,))


def _check_connection_info(info: Any) -> tuple[str, str]:
    """``(driver_volume_type, access_mode)`` of connection info this driver can use."""
    kind = info.get('driver_volume_type') if isinstance(info, dict) else None
    if kind not in KNOWN_VOLUME_TYPES:
        raise exception.VirtDriverError(reason='unsupported driver_volume_type %r' % kind)
    data = info.get('data') if isinstance(info.get('data'), dict) else {}
    access_mode = data.get('access_mode') or 'rw'
    if access_mode not in ('rw', 'ro'):
        raise exception.VirtDriverError(reason='unknown access_mode %r' % access_mode)
    return kind, access_mode


class FakeDriver(driver.VirtDriver):
    capabilities = {'supports_multiattach': True, 'supports_device_naming': True,
                    'supports_extend_volume': True, 'supports_refresh_connection': True}

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        self._store = fake_store.Store(os.path.join(conf.state_path, 'fake-virt'))

    def _update(self, instance_uuid: str, change, volume_id: Any) -> Any:
        """Apply ``change(state)`` to the instance's record; committed before it is
        returned, atomically. ``state`` is ``{'instances': {uuid: record}}``."""
        if not isinstance(volume_id, str):  # a key JSON would turn into another one
            raise exception.InvalidInput(reason='bad volume id %r' % (volume_id,))

        def on_record(record: dict) -> Any:
            return change({'instances': {instance_uuid: record}})
        return self._store.update(instance_uuid, on_record)

    @staticmethod
    def _instance(state: dict, instance_uuid: str) -> dict:
        return state['instances'][instance_uuid]

    @staticmethod
    def _holder(inst: dict, device: str) -> Optional[str]:
        """The volume that has ``device`` attached or reserved, or 'root'."""
        used = {ROOT_DEVICE: 'root'}
        used.update({att['mountpoint']: vol for vol, att in inst['attachments'].items()})
        used.update({name: vol for vol, name in inst['reservations'].items()})
        return used.get(device)

    # --- the driver contract ---------------------------------------------------------

    def attach_volume(self, context: Any, connection_info: dict, instance: dict,
                      mountpoint: str, volume_id: str, record: Optional[dict] = None) -> None:
        kind, access_mode = _check_connection_info(connection_info)
        record = record or {}
        _check_device(mountpoint)
        instance_uuid = instance['uuid']
        LOG.debug('Attaching volume %(vol)s with %(info)s',
                  {'vol': volume_id, 'info': strutils.mask_dict_password(connection_info)})

        def change(state: dict) -> bool:
            inst = self._instance(state, instance_uuid)
            current = inst['attachments'].get(volume_id)
            if current is not None:
                if current['mountpoint'] == mountpoint:
                    return False
                raise exception.VirtDriverError(
                    reason='volume %s is already attached to %s at %s'
                    % (volume_id, instance_uuid, current['mountpoint']))
            holder = self._holder(inst, mountpoint)
            if holder not in (None, volume_id):
                raise exception.DeviceInUse(mountpoint=mountpoint, instance_uuid=instance_uuid)
            inst['reservations'].pop(volume_id, None)
            inst.get('reserved_at', {}).pop(volume_id, None)
            inst['attachments'][volume_id] = {
                'volume_id': volume_id,
                'mountpoint': mountpoint,
                'driver_volume_type': kind,
                'access_mode': access_mode,
                'flow': record.get('flow'),
                'attachment_id': record.get('attachment_id'),
                # read-only when either side asks for it
                'mode': 'ro' if 'ro' in (record.get('mode'), access_mode) else 'rw',
                'attached_at': datetime.datetime.now(datetime.timezone.utc).isoformat(),
            }
            return True

        attached = self._update(instance_uuid, change, volume_id)
        LOG.info('%(what)s volume %(vol)s to instance %(inst)s at %(mp)s',
                 {'what': 'Attached' if attached else 'Already attached',
                  'vol': volume_id, 'inst': instance_uuid, 'mp': mountpoint})

    def detach_volume(self, context: Any, instance: dict, mountpoint: Optional[str],
                      volume_id: str) -> None:
        instance_uuid = instance['uuid']

        def change(state: dict) -> Optional[dict]:
            inst = self._instance(state, instance_uuid)
            inst['reservations'].pop(volume_id, None)
            inst.get('reserved_at', {}).pop(volume_id, None)
            return inst['attachments'].pop(volume_id, None)

        detached = self._update(instance_uuid, change, volume_id)
        if detached is None:
            LOG.info('Volume %(vol)s is not attached to instance %(inst)s; nothing to detach',
                     {'vol': volume_id, 'inst': instance_uuid})
            return
        if mountpoint and mountpoint != detached['mountpoint']:
            # The volume id is authoritative; a stale mountpoint is worth a note only.
            LOG.warning('Volume %(vol)s was attached at %(real)s, not %(mp)s',
                        {'vol': volume_id, 'real': detached['mountpoint'], 'mp': mountpoint})
        LOG.info('Detached volume %(vol)s from instance %(inst)s at %(mp)s',
                 {'vol': volume_id, 'inst': instance_uuid, 'mp': detached['mountpoint']})

    def extend_volume(self, context: Any, connection_info: Optional[dict], instance: dict,
                      volume_id: str, new_size: int) -> Optional[int]:
        instance_uuid = instance['uuid']

        def change(state: dict) -> Optional[int]:
            current = self._instance(state, instance_uuid)['attachments'].get(volume_id)
            if current is None:
                raise exception.VolumeNotExtendable(
                    volume_id=volume_id,
                    reason='it is not attached to instance %s' % instance_uuid)
            old = current.get('size_bytes')
            if old is not None and new_size < old:
                raise exception.VolumeNotExtendable(
                    volume_id=volume_id, reason='the disk has %d bytes already; %d would '
                    'shrink it' % (old, new_size))
            current['size_bytes'] = new_size
            return old

        old = self._update(instance_uuid, change, volume_id)
        LOG.info('Extended volume %(vol)s of instance %(inst)s to %(size)d bytes (was %(old)s)',
                 {'vol': volume_id, 'inst': instance_uuid, 'size': new_size,
                  'old': 'unknown' if old is None else old})
        return old

    def instance_running(self, instance_uuid: str) -> Optional[bool]:
        return False  # no guest runs here: nothing can be using its disks

    def check_refresh(self, instance_uuid: str, volume_id: str) -> None:
        if not any(a['volume_id'] == volume_id for a in self.get_attachments(instance_uuid)):
            raise exception.VolumeNotRefreshable(
                volume_id=volume_id, reason='it is not attached to instance %s' % instance_uuid)

    def refresh_connection(self, context: Any, connection_info: dict, instance: dict,
                           mountpoint: str, volume_id: str, record: dict) -> None:
        kind, access_mode = _check_connection_info(connection_info)
        instance_uuid = instance['uuid']

        def change(state: dict) -> None:
            current = self._instance(state, instance_uuid)['attachments'].get(volume_id)
            if current is None:
                raise exception.VolumeNotRefreshable(
                    volume_id=volume_id,
                    reason='it is not attached to instance %s' % instance_uuid)
            if current['mountpoint'] != mountpoint:
                raise exception.VolumeNotRefreshable(
                    volume_id=volume_id, reason='it is at %s, not %s'
                    % (current['mountpoint'], mountpoint))
            current.update(driver_volume_type=kind, access_mode=access_mode,
                           flow=record.get('flow'), attachment_id=record.get('attachment_id'),
                           mode='ro' if 'ro' in (record.get('mode'), access_mode) else 'rw')

        self._update(instance_uuid, change, volume_id)
        LOG.info('Refreshed the connection of volume %(vol)s on instance %(inst)s: '
                 'attachment %(att)s', {'vol': volume_id, 'inst': instance_uuid,
                                        'att': record.get('attachment_id')})

    def get_attachments(self, instance_uuid: str) -> list[dict]:
        records = [dict({'size_bytes': None}, **record) for record in
                   self._store.load(instance_uuid)['attachments'].values()]
        # /dev/vdz before /dev/vdaa, as the disks were handed out.
        return sorted(records, key=lambda r: (len(r['mountpoint']), r['mountpoint']))

    def reserve_device_name(self, instance_uuid: str, volume_id: str,
                            device: Optional[str] = None) -> str:
        if device is not None:
            _check_device(device)

        def change(state: dict) -> str:
            inst = self._instance(state, instance_uuid)
            if volume_id in inst['attachments']:
                return inst['attachments'][volume_id]['mountpoint']
            if volume_id in inst['reservations']:
                return inst['reservations'][volume_id]
            if device is not None:
                if self._holder(inst, device) is not None:
                    raise exception.DeviceInUse(mountpoint=device, instance_uuid=instance_uuid)
                chosen = device
            else:
                index = 1  # 'a' is the root disk
                while self._holder(inst, DEVICE_PREFIX + state_files.letters(index)) is not None:
                    index += 1
                chosen = DEVICE_PREFIX + state_files.letters(index)
            inst['reservations'][volume_id] = chosen
            inst.setdefault('reserved_at', {})[volume_id] = time.time()
            return chosen

        return self._update(instance_uuid, change, volume_id)

    def release_device_name(self, instance_uuid: str, volume_id: str) -> None:
        def change(state: dict) -> None:
            inst = self._instance(state, instance_uuid)
            inst['reservations'].pop(volume_id, None)
            inst.get('reserved_at', {}).pop(volume_id, None)

        self._update(instance_uuid, change, volume_id)

    def reservations(self) -> list[dict]:
        index = self._store.reservations()
        return [{'instance_uuid': uuid, 'volume_id': vol, 'device': device,
                 'reserved_at': reserved_at}
                for uuid, volumes in index.items()
                for vol, (device, reserved_at) in volumes.items()]

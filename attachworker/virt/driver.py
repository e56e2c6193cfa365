"""The virt driver contract: how a volume is connected to an instance.

A driver is looked up by name (``attachworker.virt.load_driver``) and constructed
with the ConfigOpts. The manager asks ``capabilities`` instead of checking types.
"""
import abc
from typing import Any
from typing import Optional

from oslo_config import cfg

from attachworker import exception


class VirtDriver(abc.ABC):
    """Connects Cinder volumes to instances on this host.

    ``instance`` arguments are dicts with at least ``uuid``::

        {'uuid': '8f0e3c4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b', 'project_id': '4c2a...'}

    ``connection_info`` is what Cinder returns from ``initialize_connection`` or
    ``attachment_update``; ``data`` may carry CHAP secrets, so a driver never
    stores or logs it unmasked::

        {'driver_volume_type': 'iscsi',
         'data': {'target_iqn': 'iqn.2010-10.org.openstack:volume-b120...',
                  'target_portal': '192.0.2.20:3260', 'target_lun': 1,
                  'auth_method': 'CHAP', 'auth_username': 'u',
                  'auth_password': '...', 'access_mode': 'rw'}}
    """

    #: What the driver can do, e.g. ``{'supports_multiattach': True,
    #: 'supports_device_naming': True}``. Subclasses override.
    #: ``supports_extend_volume``: ``extend_volume`` resizes the instance's disk.
    #: ``supports_refresh_connection``: ``refresh_connection`` swaps the connection
    #: info of a stopped instance's disk.
    capabilities: dict = {
        'supports_multiattach': False,
        'supports_device_naming': False,
        'supports_extend_volume': False,
        'supports_refresh_connection': False,
    }

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        self.conf = conf

    @abc.abstractmethod
    def attach_volume(self, context: Any, connection_info: dict, instance: dict,
                      mountpoint: str, volume_id: str, record: Optional[dict] = None) -> None:
        """Attach the volume at ``mountpoint`` (``'/dev/vdb'``) of the instance.

        ``record`` says how the attachment was made, and the driver keeps it with
        the attachment (``get_attachments`` returns it) so detach and recovery follow
        it rather than today's configuration::

            {'flow': 'attachments', 'attachment_id': '5d77...', 'mode': 'ro',
             'multiattach': False}

        ``mode`` is ``'rw'`` or ``'ro'``: a read-only attachment is read-only in
        the guest. ``multiattach``: the volume may be attached to several instances
        at once (a hypervisor must then open it shared).

        Attaching the same volume at the same mountpoint again does nothing.
        Raises DeviceInUse when another volume uses ``mountpoint`` on that
        instance, VirtDriverError for connection info the driver cannot use.
        """

    @abc.abstractmethod
    def detach_volume(self, context: Any, instance: dict, mountpoint: Optional[str],
                      volume_id: str) -> None:
        """Detach the volume from the instance; a volume not attached is a no-op."""

    @abc.abstractmethod
    def get_attachments(self, instance_uuid: str) -> list[dict]:
        """The volumes attached to the instance, ordered by mountpoint::

            [{'volume_id': 'b1204e0c-...', 'mountpoint': '/dev/vdb',
              'driver_volume_type': 'iscsi', 'access_mode': 'rw',
              'flow': 'attachments', 'attachment_id': '5d77...', 'mode': 'rw',
              'attached_at': '2026-11-25T10:42:07.123456+00:00'}]

        ``flow``, ``attachment_id`` and ``mode`` are those of the ``record`` given at
        attach (None when it was not given). A driver that keeps the size the instance
        sees adds ``size_bytes`` (None when not known yet).
        """

    @abc.abstractmethod
    def reserve_device_name(self, instance_uuid: str, volume_id: str,
                            device: Optional[str] = None) -> str:
        """Reserve and return the device the next attach of the volume will use.

        ``'/dev/vdb'``, then ``'/dev/vdc'``... (``/dev/vda`` is the root disk). A
        requested ``device`` is honoured if free, else DeviceInUse. Two
        reservations never get the same name; reserving again for the same
        volume returns the name it already has.
        """

    @abc.abstractmethod
    def release_device_name(self, instance_uuid: str, volume_id: str) -> None:
        """Drop the volume's reservation (after a failed attach); no-op if none."""

    @abc.abstractmethod
    def reservations(self) -> list[dict]:
        """Every device reservation no attach has used yet, for expiry::

            [{'instance_uuid': '8f0e...', 'volume_id': 'b120...', 'device': '/dev/vdc',
              'reserved_at': 1764580927.5}]
        """

    def extend_volume(self, context: Any, connection_info: Optional[dict], instance: dict,
                      volume_id: str, new_size: int) -> Optional[int]:
        """Make the instance see its attached volume at ``new_size`` **bytes**.

        Nova's ``volume-extended`` event: Cinder has extended the volume, and the
        caller passes the size Cinder reports (its ``size`` in GiB, in bytes, as
        Nova's ``requested_size``), never a size from the cast.

        ``connection_info`` is Cinder's connection info of the attachment when the
        caller has it, else None. The pipeline passes None: attachworker never keeps
        connection info (it may carry secrets), so a driver finds the storage from
        its own record of the attachment (the libvirt driver: the disk in the domain
        XML). The argument keeps Nova's order for drivers whose host device needs
        fresh connection info to be rescanned.

        Returns the size in bytes the instance saw before, or None when the driver
        cannot tell. A stopped instance needs nothing: it sees the volume's size when
        it starts. Never shrinks: a ``new_size`` below what the instance sees is
        refused; an equal one does nothing, so calling again is harmless. There is
        no undo: a grown disk is not shrunk back.

        Raises VolumeNotExtendable when the volume is not attached to the instance
        here, ExtendVolumeNotSupported when the driver cannot resize it (both
        definite: nothing changed), VirtDriverError otherwise. This default refuses:
        a driver that can, overrides it and sets ``supports_extend_volume``.
        """
        raise exception.ExtendVolumeNotSupported(
            volume_id=volume_id, reason='%s does not implement it' % type(self).__name__)

    def instance_running(self, instance_uuid: str) -> Optional[bool]:
        """Is the instance's guest running here? None when the driver cannot tell.

        ``volume_attachment refresh`` changes an attached volume's disk only when
        this is False (nova-manage's rule: the instance must be stopped).
        """
        return None

    def check_refresh(self, instance_uuid: str, volume_id: str) -> None:
        """Refuse, before Cinder is asked anything, a refresh this driver could not
        complete for the volume's disk as it is now (VolumeNotRefreshable,
        RefreshNotSupported, InstanceNotStopped: definite). This default refuses."""
        raise exception.RefreshNotSupported(
            volume_id=volume_id, reason='%s does not implement it' % type(self).__name__)

    def refresh_connection(self, context: Any, connection_info: dict, instance: dict,
                           mountpoint: str, volume_id: str, record: dict) -> None:
        """Give the disk of an attached volume new connection info (from a new
        Cinder attachment: ``record['attachment_id']``), keeping its device.

        For ``attachworker-manage volume_attachment refresh``, e.g. after the storage
        network changed. The instance is stopped (the caller checked
        ``instance_running``). Afterwards ``get_attachments`` shows the record's
        attachment id. Calling it again with the same arguments does nothing more.

        Raises VolumeNotRefreshable when the volume is not attached to the
        instance here, RefreshNotSupported when the driver cannot do it for this
        kind of volume (both definite: nothing changed), VirtDriverError otherwise.
        This default refuses; a driver that can overrides it and sets
        ``supports_refresh_connection``.
        """
        raise exception.RefreshNotSupported(
            volume_id=volume_id, reason='%s does not implement it' % type(self).__name__)

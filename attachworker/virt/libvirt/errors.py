"""The libvirt driver's failures, all VirtDriverError.

``expected = True`` marks a *definite* failure: the driver checked that nothing
changed on the host (no disk added or removed, no storage connection left), so the
pipeline drops the step's undo. Every other failure is ambiguous and the undo
stays armed.
"""
from attachworker import exception


class LibvirtNotInstalled(exception.VirtDriverError):
    msg_fmt = ('[virt] driver = libvirt needs the libvirt Python bindings '
               '(pip install libvirt-python): %(reason)s')
    expected = True


class HypervisorUnavailable(exception.VirtDriverError):
    """The connection could not be opened: nothing was asked of libvirt."""

    msg_fmt = 'Cannot connect to libvirt at %(uri)s: %(reason)s'
    code = 503
    expected = True


class InstanceNotFound(exception.InstanceNotFound):
    msg_fmt = ('Instance %(instance_uuid)s has no libvirt domain on this host '
               '(no domain with that UUID at %(uri)s)')


class UnsupportedVolume(exception.VirtDriverError):
    """Connection info this driver cannot attach: refused before the guest is touched."""

    msg_fmt = 'Volume %(volume_id)s cannot be attached by the libvirt driver: %(reason)s'
    code = 400
    expected = True


class VolumeAttachedElsewhere(exception.VirtDriverError):
    msg_fmt = ('Volume %(volume_id)s is already attached to instance %(instance_uuid)s '
               'at %(device)s')
    code = 409
    expected = True


class NoFreeDevice(exception.VirtDriverError):
    msg_fmt = 'Instance %(instance_uuid)s has no free device name left on the %(bus)s bus'
    code = 409
    expected = True


class OsBrickMissing(exception.VirtDriverError):
    msg_fmt = ('%(protocol)s volumes need os-brick on this host '
               '(pip install os-brick): %(reason)s')
    expected = True


class StorageConnectFailed(exception.VirtDriverError):
    msg_fmt = 'os-brick could not %(action)s volume %(volume_id)s: %(reason)s'


class LibvirtCallFailed(exception.VirtDriverError):
    """libvirt refused or failed a call; ``reason`` is libvirt's own message."""

    msg_fmt = 'libvirt could not %(action)s: %(reason)s'


class DeviceDetachFailed(exception.VirtDriverError):
    """The guest did not let go of the disk; it is still in the live domain."""

    msg_fmt = 'Volume %(volume_id)s was not detached from instance %(instance_uuid)s: %(reason)s'
    code = 409


def definite(exc: exception.VirtDriverError) -> exception.VirtDriverError:
    """``exc`` marked definite: the caller checked that nothing changed."""
    exc.expected = True
    return exc

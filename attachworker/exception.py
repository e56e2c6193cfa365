"""attachworker's exceptions, grouped by cause.

Foreign exceptions (cinderclient, keystoneauth1, the virt driver) are translated
into these once, at the adapter that owns the library, with ``raise ... from``.
Every class carries structured fields and an HTTP-like ``code`` that ends up in
the ``fault`` of an ``.error`` notification.
"""
from typing import Any
from typing import Optional


class AttachWorkerException(Exception):
    """Base class: ``msg_fmt`` is formatted with the keyword arguments."""

    msg_fmt = 'An unknown error occurred.'
    code = 500
    #: Expected failures (bad input, a volume in the wrong state) are logged
    #: without a traceback; unexpected ones with it.
    expected = False

    def __init__(self, message: Optional[str] = None, code: Optional[int] = None,
                 **kwargs: Any) -> None:
        self.kwargs = kwargs
        if code is not None:
            self.code = code
        if message is None:
            try:
                message = self.msg_fmt % kwargs
            except (KeyError, TypeError):
                message = self.msg_fmt
        self.message = message
        for key, value in kwargs.items():
            setattr(self, key, value)
        super().__init__(message)

    def __str__(self) -> str:
        return self.message


# --- bad input: the cast itself is wrong -------------------------------------------

class InvalidInput(AttachWorkerException):
    """An RPC argument is missing, malformed or too large."""

    msg_fmt = 'Invalid input: %(reason)s'
    code = 400
    expected = True


# --- the volume is not attachable ----------------------------------------------------

class VolumeNotFound(AttachWorkerException):
    """Cinder has no such volume (or the caller may not see it)."""

    msg_fmt = 'Volume %(volume_id)s could not be found.'
    code = 404
    expected = True


class InvalidVolume(AttachWorkerException):
    """The volume exists but cannot be attached now (status, multiattach, AZ)."""

    msg_fmt = 'Volume %(volume_id)s cannot be attached: %(reason)s'
    code = 409
    expected = True


class VolumeNotExtendable(InvalidVolume):
    """An extend cast for a volume that is not attached to the instance here and
    ``in-use`` in Cinder: nothing is asked of the virt driver."""

    msg_fmt = 'Volume %(volume_id)s cannot be extended on this host: %(reason)s'


class VolumeNotRefreshable(InvalidVolume):
    """``volume_attachment refresh`` of a volume this host and Cinder do not both show
    attached to the instance, with the same attachment: nothing is changed."""

    msg_fmt = 'The attachment of volume %(volume_id)s cannot be refreshed: %(reason)s'


class InstanceNotStopped(AttachWorkerException):
    """The refresh changes the instance's disk: its guest must not be running
    (nova-manage's rule). Nothing is changed."""

    msg_fmt = ('Instance %(instance_uuid)s must be stopped to refresh the connection of '
               'volume %(volume_id)s: %(reason)s')
    code = 409
    expected = True


class AttachmentNotFound(AttachWorkerException):
    """Cinder has no such attachment."""

    msg_fmt = 'Attachment %(attachment_id)s could not be found.'
    code = 404
    expected = True


# --- Cinder or Keystone said no, or did not answer -----------------------------------

class CinderNotAuthorized(AttachWorkerException):
    """Cinder or Keystone rejected the credentials (HTTP 401)."""

    msg_fmt = 'Not authorized by Cinder: %(reason)s'
    code = 401
    expected = True


class CinderForbidden(AttachWorkerException):
    """Cinder refused the call for this caller (HTTP 403)."""

    msg_fmt = 'Forbidden by Cinder: %(reason)s'
    code = 403
    expected = True


class CinderBadRequest(AttachWorkerException):
    """Cinder rejected the request as invalid (HTTP 400, 409 or 413)."""

    msg_fmt = 'Cinder rejected the request: %(reason)s'
    code = 400
    expected = True


class CinderUnavailable(AttachWorkerException):
    """Cinder could not be reached, timed out, or answered 5xx."""

    msg_fmt = 'Cinder is unavailable: %(reason)s'
    code = 503


class CinderError(AttachWorkerException):
    """Cinder answered with an error no other class describes."""

    msg_fmt = 'Cinder error: %(reason)s'


class IdentityUnavailable(AttachWorkerException):
    """Keystone could not be reached to get a (service) token."""

    msg_fmt = 'Keystone is unavailable: %(reason)s'
    code = 503


class EndpointNotFound(AttachWorkerException):
    """No Cinder endpoint in the catalog matches ``[cinder] catalog_info``."""

    msg_fmt = 'No Cinder endpoint found: %(reason)s'
    code = 500


# --- the host side --------------------------------------------------------------------

class VirtDriverNotFound(AttachWorkerException):
    """``[virt] driver`` names no installed driver."""

    msg_fmt = 'No virt driver named %(name)s (installed: %(available)s)'


class VirtDriverError(AttachWorkerException):
    """The virt driver failed to attach or detach."""

    msg_fmt = 'Virt driver failed: %(reason)s'


class InstanceNotFound(VirtDriverError):
    """The virt driver has no such instance on this host."""

    msg_fmt = 'Instance %(instance_uuid)s is not on this host'
    code = 404
    expected = True


class DeviceInUse(VirtDriverError):
    """The requested device name is already used on the instance."""

    msg_fmt = 'Device %(mountpoint)s is already in use on instance %(instance_uuid)s'
    code = 409
    expected = True


class ExtendVolumeNotSupported(VirtDriverError):
    """The virt driver cannot resize an attached volume's disk (as Nova's)."""

    msg_fmt = ('The virt driver of this host cannot extend attached volume %(volume_id)s: '
               '%(reason)s')
    code = 409
    expected = True


class RefreshNotSupported(VirtDriverError):
    """The virt driver cannot give an attached volume new connection info."""

    msg_fmt = ('The virt driver of this host cannot refresh the connection of volume '
               '%(volume_id)s: %(reason)s')
    code = 409
    expected = True


class ConnectorError(AttachWorkerException):
    """The host's connector properties could not be gathered."""

    msg_fmt = 'Could not read the host connector properties: %(reason)s'


# --- the worker itself -----------------------------------------------------------------

class ShuttingDown(AttachWorkerException):
    """The worker stopped the operation because it is shutting down."""

    msg_fmt = 'The worker is shutting down: %(reason)s'
    code = 503


class JournalError(AttachWorkerException):
    """The local journal could not be written."""

    msg_fmt = 'Journal error: %(reason)s'


# --- the audit store -------------------------------------------------------------------

class MalformedNotification(AttachWorkerException):
    """A notification is not ours or breaks the contract; it is stored as rejected."""

    msg_fmt = '%(reason)s'
    code = 400
    expected = True


class AuditStoreUnavailable(AttachWorkerException):
    """The audit database cannot be reached or is locked; the consumer holds the
    message and tries again after a back-off."""

    msg_fmt = 'Audit store unavailable: %(reason)s'
    code = 503
    expected = True


class AuditRecordRefused(AttachWorkerException):
    """The audit database refused a row (a constraint or a value); it is rejected."""

    msg_fmt = 'Audit store refused the row: %(reason)s'
    code = 400
    expected = True


class AuditBackendUnsupported(AttachWorkerException):
    """``[audit] connection`` names a database the audit store cannot upsert into."""

    msg_fmt = ('Audit store backend %(dialect)s is not supported '
               '(supported: %(supported)s)')


class AuditSchemaOutdated(AttachWorkerException):
    """The audit database schema is not at the revision this code needs."""

    msg_fmt = ('Audit database is at revision %(current)s, this code needs %(head)s: '
               'run "attachworker-audit db upgrade"')
    expected = True


class OperationNotFound(AttachWorkerException):
    """No operation with this request id in the audit store."""

    msg_fmt = 'No operation with request id %(request_id)s in the audit store.'
    code = 404
    expected = True


class VolumeAlreadyAttached(AttachWorkerException):
    msg_fmt = ('Volume %(volume_id)s is already %(how)s instance %(instance_uuid)s '
               '(device %(device)s)')
    code = 409
    expected = True


class MultiattachNotSupported(AttachWorkerException):
    msg_fmt = 'The virt driver of this host cannot attach a volume to several instances'
    code = 409
    expected = True


# --- the service itself ------------------------------------------------------------

class MetricsUnavailable(AttachWorkerException):
    msg_fmt = ('Cannot serve Prometheus metrics on %(host)s port %(port)s: %(reason)s '
               '(see [metrics] host and port)')


class LocksUnavailable(AttachWorkerException):
    msg_fmt = ('The host locks under %(path)s cannot be taken: %(reason)s (each lock '
               'needs a free file descriptor, and the directory a writable local '
               'filesystem with open file description locks: Linux 3.15 or later)')

"""Every cinderclient/keystoneauth1 exception, translated here once into
attachworker.exception classes."""
from typing import Any

from cinderclient import exceptions as cinder_exc
from keystoneauth1 import exceptions as ks_exc

from attachworker import exception


def translate(step: str, exc: BaseException, **ids: Any) -> exception.AttachWorkerException:
    """Map a cinderclient/keystoneauth1 exception to ours (``step`` only for the log)."""
    reason = getattr(exc, 'message', None) or str(exc) or type(exc).__name__
    code = getattr(exc, 'code', None)
    if isinstance(exc, cinder_exc.NotFound):
        if ids.get('attachment_id') and not ids.get('volume_id'):
            return exception.AttachmentNotFound(attachment_id=ids['attachment_id'])
        return exception.VolumeNotFound(volume_id=ids.get('volume_id'))
    if isinstance(exc, cinder_exc.Unauthorized):
        return exception.CinderNotAuthorized(reason=reason)
    if isinstance(exc, cinder_exc.Forbidden):
        return exception.CinderForbidden(reason=reason)
    if isinstance(exc, cinder_exc.ClientException) and code in (400, 409, 413):
        if ids.get('volume_id') and step in ('reserve', 'attachment_create'):
            return exception.InvalidVolume(volume_id=ids['volume_id'], reason=reason, code=code)
        return exception.CinderBadRequest(reason=reason, code=code)
    if isinstance(exc, cinder_exc.ClientException) and code and code >= 500:
        return exception.CinderUnavailable(reason=reason, code=code)
    if isinstance(exc, cinder_exc.ClientException):
        return exception.CinderError(reason=reason, code=code)
    if isinstance(exc, ks_exc.EndpointNotFound):
        return exception.EndpointNotFound(reason=reason)
    if isinstance(exc, ks_exc.Unauthorized):
        return exception.CinderNotAuthorized(reason=reason)
    if isinstance(exc, (ks_exc.ConnectTimeout, ks_exc.RequestTimeout)):
        return exception.CinderUnavailable(reason='timed out: %s' % reason, code=504)
    if isinstance(exc, (ks_exc.ConnectionError, cinder_exc.ConnectionError)):
        return exception.CinderUnavailable(reason=reason, code=503)
    if isinstance(exc, ks_exc.ClientException):
        return exception.CinderError(reason=reason, code=getattr(exc, 'http_status', None))
    return exception.CinderError(reason=reason)

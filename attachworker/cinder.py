"""The Cinder adapter: the only module that imports cinderclient and keystoneauth1.

Who speaks to Cinder:

* a caller's context with a token: that token (Cinder decides what the caller may
  touch), wrapped in ``ServiceTokenAuthWrapper`` when
  ``[service_user] send_service_user_token`` is set;
* a context with no token (recovery, reconcile): the ``[cinder]`` auth section. It is
  never used as a fallback when Cinder rejects the caller's token.

Where Cinder is: ``[cinder] endpoint_template`` when set, else the catalog (the
caller's ``service_catalog`` when the context has one, else the catalog of the
``[cinder]`` auth) filtered by ``catalog_info`` and ``os_region_name``.

Errors: every cinderclient/keystoneauth1 exception is translated here, once, into
attachworker.exception classes. Retries (``http_retries``), of connection failures
and HTTP 500/504, only for idempotent calls (GET, DELETE, undo calls): a
non-idempotent call that failed may have been done, and the pipeline undoes it.
"""
import threading
from typing import Any
from typing import Callable
from typing import Optional

from cinderclient import api_versions
from cinderclient import client as cinder_client
from cinderclient import exceptions as cinder_exc
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import loading as ks_loading
from keystoneauth1 import service_token
from keystoneauth1 import token_endpoint
from keystoneauth1.access import service_catalog
from oslo_config import cfg
from oslo_log import log as logging

from attachworker import exception

LOG = logging.getLogger(__name__)

MIN_ATTACHMENTS_VERSION = api_versions.APIVersion('3.44')
MODE_VERSION = api_versions.APIVersion('3.54')
CLIENT_MAX_VERSION = api_versions.APIVersion(api_versions.MAX_VERSION)
RETRIABLE_STATUS = [500, 504]


def _volume_view(volume: Any) -> dict:
    """The fields the pipeline reads, as a plain dict."""
    info = volume.to_dict() if hasattr(volume, 'to_dict') else dict(volume)
    return {
        'id': info.get('id'),
        'status': info.get('status'),
        'attach_status': info.get('attach_status'),
        'multiattach': bool(info.get('multiattach')),
        'availability_zone': info.get('availability_zone'),
        'project_id': info.get('os-vol-tenant-attr:tenant_id'),
        'attachments': list(info.get('attachments') or []),
    }


def _nest_connection_info(flat: dict) -> dict:
    """An attachment's connection_info in the ``{driver_volume_type, data}`` form.

    The attachments API returns the driver's keys flat, beside ``driver_volume_type``
    and ``attachment_id``; initialize_connection (and every virt driver) uses the
    nested form.
    """
    data = {k: v for k, v in flat.items() if k not in ('driver_volume_type', 'attachment_id')}
    return {'driver_volume_type': flat.get('driver_volume_type'), 'data': data} if flat else {}


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


class ServiceTokenAuth(service_token.ServiceTokenAuthWrapper):
    """The caller's auth plus a service token fetched through a session of its own.

    keystoneauth1's wrapper gets the service token with the session of the request
    it decorates (the ``[cinder]`` one); this one uses ``service_session``, loaded
    from ``[service_user]``, so that section's cafile, insecure, timeout... apply
    to the service user's Keystone calls.
    """

    def __init__(self, user_auth: Any, service_auth: Any, service_session: Any) -> None:
        super().__init__(user_auth=user_auth, service_auth=service_auth)
        self.service_session = service_session

    def get_headers(self, session: Any) -> dict:
        headers = dict(self.user_auth.get_headers(session) or {})
        token = self.service_auth.get_token(self.service_session)
        if token:
            headers[service_token.SERVICE_AUTH_HEADER_NAME] = token
        return headers


class CinderAPI:
    """Builds per-context clients; shared by every worker thread."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        self._conf = conf
        self._session = ks_loading.load_session_from_conf_options(conf, 'cinder')
        # the service user's Keystone calls: [service_user] cafile, timeout...
        self._service_session = ks_loading.load_session_from_conf_options(conf,
                                                                          'service_user')
        self._lock = threading.Lock()
        self._admin_auth: Any = None
        self._service_auth: Any = None
        self._versions: dict = {}

    # --- who we are -------------------------------------------------------------------
    def _load_auth(self, group: str) -> Any:
        auth = ks_loading.load_auth_from_conf_options(self._conf, group)
        if auth is None:
            raise exception.CinderNotAuthorized(
                reason='no auth configured in [%s] and the request carries no token' % group)
        return auth

    def _admin(self) -> Any:
        with self._lock:
            if self._admin_auth is None:
                self._admin_auth = self._load_auth('cinder')
            return self._admin_auth

    def _service(self) -> Any:
        with self._lock:
            if self._service_auth is None:
                self._service_auth = self._load_auth('service_user')
            return self._service_auth

    def _ensure_token(self, auth: Any, who: str, session: Any = None) -> None:
        """Get a token from Keystone now, so its failure is not blamed on Cinder."""
        try:
            auth.get_token(session or self._session)
        except ks_exc.Unauthorized as exc:
            raise exception.CinderNotAuthorized(reason='%s: %s' % (who, exc)) from exc
        except (ks_exc.ConnectionError, ks_exc.RequestTimeout, ks_exc.DiscoveryFailure) as exc:
            raise exception.IdentityUnavailable(reason='%s: %s' % (who, exc)) from exc
        except ks_exc.HttpError as exc:  # a Keystone 500/503: ours to report, not raw
            raise exception.IdentityUnavailable(
                reason='%s: Keystone answered %s' % (who, exc.http_status)) from exc

    # --- where Cinder is ---------------------------------------------------------------
    def _catalog_filter(self) -> dict:
        service_type, service_name, interface = self._conf.cinder.catalog_info.split(':', 2)
        return {'service_type': service_type, 'service_name': service_name or None,
                'interface': interface, 'region_name': self._conf.cinder.os_region_name}

    def _endpoint(self, ctxt: Any) -> str:
        template = self._conf.cinder.endpoint_template
        if template:
            # Cinder refuses a URL whose project is not the token's project (HTTP 400)
            project_id = ctxt.project_id
            if not ctxt.auth_token:
                admin = self._admin()
                self._ensure_token(admin, '[cinder] auth')
                project_id = admin.get_project_id(self._session)
            return template % {'project_id': project_id}
        wanted = self._catalog_filter()
        if ctxt.service_catalog:
            endpoints = ctxt.service_catalog[0].get('endpoints') or [{}]
            cls = (service_catalog.ServiceCatalogV2 if 'publicURL' in endpoints[0]
                   else service_catalog.ServiceCatalogV3)
            url = cls(ctxt.service_catalog).url_for(**wanted)
            return url
        admin = self._admin()
        self._ensure_token(admin, '[cinder] auth')
        try:
            url = self._session.get_endpoint(auth=admin, **wanted)
        except ks_exc.EndpointNotFound as exc:
            raise exception.EndpointNotFound(reason=str(exc)) from exc
        if not url:
            raise exception.EndpointNotFound(reason='catalog has no %(service_type)s' % wanted)
        # The [cinder] user's catalog carries its own project id; a caller's request
        # must go to the caller's project.
        own_project = admin.get_project_id(self._session)
        if ctxt.auth_token and ctxt.project_id and own_project and own_project in url:
            url = url.replace(own_project, ctxt.project_id)
        return url

    # --- which microversion -----------------------------------------------------------
    def _negotiate(self, endpoint: str, auth: Any,
                   global_request_id: str) -> api_versions.APIVersion:
        with self._lock:
            known = self._versions.get(endpoint)
        if known is not None:
            return known
        probe = cinder_client.Client('3.0', session=self._session, auth=auth,
                                     endpoint_override=endpoint,
                                     global_request_id=global_request_id,
                                     connect_retries=self._conf.cinder.http_retries)
        try:
            server_max = api_versions.get_highest_version(probe)
        except Exception as exc:  # noqa: BLE001 - translated below
            raise translate('version_discovery', exc) from exc
        version = min(server_max, CLIENT_MAX_VERSION)
        LOG.info('Cinder at %(url)s supports microversions up to %(max)s; using %(use)s',
                 {'url': endpoint, 'max': server_max.get_string(), 'use': version.get_string()})
        with self._lock:
            self._versions[endpoint] = version
        return version

    def client(self, ctxt: Any) -> 'CinderClient':
        """A client acting for ``ctxt`` (the caller's token, or the [cinder] auth)."""
        endpoint = self._endpoint(ctxt)
        if ctxt.auth_token:
            auth: Any = token_endpoint.Token(endpoint, ctxt.auth_token)
        else:
            auth = self._admin()
            self._ensure_token(auth, '[cinder] auth')
        if self._conf.service_user.send_service_user_token:
            # undoing an attachment that has connection_info needs a service token
            service = self._service()
            self._ensure_token(service, '[service_user] auth', self._service_session)
            auth = ServiceTokenAuth(auth, service, self._service_session)
        version = self._negotiate(endpoint, auth, ctxt.global_id)
        common = {'session': self._session, 'auth': auth, 'endpoint_override': endpoint,
                  'global_request_id': ctxt.global_id}
        # keystoneauth1 turns a read timeout into ConnectTimeout and retries it as a
        # connect failure: a request Cinder already received would be sent twice. So
        # non-idempotent calls are sent once, whatever failed.
        once = cinder_client.Client(version.get_string(), connect_retries=0, **common)
        retries = self._conf.cinder.http_retries
        retried = cinder_client.Client(version.get_string(), connect_retries=retries,
                                       status_code_retries=retries,
                                       retriable_status_codes=RETRIABLE_STATUS, **common)
        return CinderClient(once, retried, version, self._conf.cinder.attach_flow)


class CinderClient:
    """Cinder calls for one request; returns plain dicts, raises our exceptions."""

    def __init__(self, once: Any, retried: Any, version: api_versions.APIVersion,
                 attach_flow: str) -> None:
        self._once = once
        self._retried = retried
        self.version = version
        self.flow = self._pick_flow(attach_flow)

    @property
    def honours_mode(self) -> bool:
        """Does attachment_create keep ``mode`` (rw/ro)? Only from 3.54 on."""
        return self.version >= MODE_VERSION

    def _pick_flow(self, wanted: str) -> str:
        supports = self.version >= MIN_ATTACHMENTS_VERSION
        if wanted == 'attachments' and not supports:
            raise exception.CinderError(
                reason='[cinder] attach_flow = attachments needs microversion 3.44; '
                       'Cinder offers %s' % self.version.get_string(), code=400)
        if wanted == 'legacy' or not supports:
            return 'legacy'
        return 'attachments'

    def _call(self, step: str, fn: Callable[[Any], Any], idempotent: bool = False,
              **ids: Any) -> Any:
        try:
            return fn(self._retried if idempotent else self._once)
        except (cinder_exc.ClientException, cinder_exc.ConnectionError,
                ks_exc.ClientException) as exc:
            raise translate(step, exc, **ids) from exc

    # --- reads -------------------------------------------------------------------------
    def get(self, volume_id: str) -> dict:
        return _volume_view(self._call('get_volume', lambda c: c.volumes.get(volume_id),
                                       idempotent=True, volume_id=volume_id))

    def attachment_get(self, attachment_id: str) -> dict:
        shown = self._call('attachment_get', lambda c: c.attachments.show(attachment_id),
                           idempotent=True, attachment_id=attachment_id)
        return shown.to_dict()

    # --- attachments flow (3.44+) -----------------------------------------------------
    def attachment_create(self, volume_id: str, instance_uuid: str, mode: str) -> dict:
        mode = mode if self.version >= MODE_VERSION else 'null'
        return self._call('attachment_create', lambda c: c.attachments.create(
            volume_id, None, instance_uuid, mode=mode), volume_id=volume_id)

    def attachment_update(self, attachment_id: str, connector: dict,
                          mountpoint: Optional[str]) -> dict:
        connector = dict(connector, mountpoint=mountpoint) if mountpoint else connector
        updated = self._call('attachment_update', lambda c: c.attachments.update(
            attachment_id, connector), attachment_id=attachment_id)
        info = updated.to_dict() if hasattr(updated, 'to_dict') else dict(updated)
        return _nest_connection_info(info.get('connection_info') or {})

    def attachment_complete(self, attachment_id: str) -> None:
        self._call('attachment_complete', lambda c: c.attachments.complete(attachment_id),
                   attachment_id=attachment_id)

    def attachment_delete(self, attachment_id: str) -> None:
        """Delete an attachment; one that no longer exists counts as deleted."""
        try:
            self._call('attachment_delete', lambda c: c.attachments.delete(attachment_id),
                       idempotent=True, attachment_id=attachment_id)
        except exception.AttachmentNotFound:
            LOG.info('Attachment %s was already gone', attachment_id)

    # --- legacy flow ---------------------------------------------------------------------
    def reserve(self, volume_id: str) -> None:
        self._call('reserve', lambda c: c.volumes.reserve(volume_id), volume_id=volume_id)

    def unreserve(self, volume_id: str) -> None:
        self._call('unreserve', lambda c: c.volumes.unreserve(volume_id), idempotent=True,
                   volume_id=volume_id)

    def initialize_connection(self, volume_id: str, connector: dict) -> dict:
        return self._call('initialize_connection', lambda c: c.volumes.initialize_connection(
            volume_id, connector), volume_id=volume_id)

    def terminate_connection(self, volume_id: str, connector: dict) -> None:
        self._call('terminate_connection', lambda c: c.volumes.terminate_connection(
            volume_id, connector), idempotent=True, volume_id=volume_id)

    def attach(self, volume_id: str, instance_uuid: str, mountpoint: Optional[str],
               mode: str, host_name: Optional[str] = None) -> None:
        """Mark the volume attached; ``host_name`` makes Cinder record this host."""
        self._call('attach', lambda c: c.volumes.attach(
            volume_id, instance_uuid, mountpoint, mode=mode, host_name=host_name),
            volume_id=volume_id)

    def begin_detaching(self, volume_id: str) -> None:
        self._call('begin_detaching', lambda c: c.volumes.begin_detaching(volume_id),
                   volume_id=volume_id)

    def roll_detaching(self, volume_id: str) -> None:
        self._call('roll_detaching', lambda c: c.volumes.roll_detaching(volume_id),
                   idempotent=True, volume_id=volume_id)

    def detach(self, volume_id: str, attachment_id: Optional[str]) -> None:
        """Legacy detach of one attachment."""
        self._call('detach', lambda c: c.volumes.detach(volume_id, attachment_id),
                   idempotent=True, volume_id=volume_id)

    def attachments_of(self, volume_id: str) -> list:
        """Every attachment of the volume, attached or not: [{id, instance, status}]."""
        found = self._call('attachment_list', lambda c: c.attachments.list(
            search_opts={'volume_id': volume_id, 'all_tenants': 1}), idempotent=True,
            volume_id=volume_id)
        return [{'id': a.id, 'instance': getattr(a, 'instance', None),
                 'status': getattr(a, 'status', None)} for a in found]

    def detach_instance(self, volume_id: str, instance_uuid: str) -> None:
        """Legacy detach of the instance, if Cinder shows it attached."""
        for att in self.get(volume_id)['attachments']:
            if att.get('server_id') == instance_uuid:
                self.detach(volume_id, att.get('attachment_id'))

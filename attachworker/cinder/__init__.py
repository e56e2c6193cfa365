"""The Cinder adapter: the only package that imports cinderclient and keystoneauth1.

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
import os
import threading
from typing import Any

from cinderclient import api_versions
from cinderclient import client as cinder_client
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import loading as ks_loading
from keystoneauth1 import service_token
from keystoneauth1 import session as ks_session
from keystoneauth1 import token_endpoint
from keystoneauth1.access import service_catalog
from oslo_config import cfg
from oslo_log import log as logging
import requests

from attachworker import exception
from attachworker import metrics
from attachworker.cinder.client import CinderClient
from attachworker.cinder.errors import translate

LOG = logging.getLogger(__name__)

CLIENT_MAX_VERSION = api_versions.APIVersion(api_versions.MAX_VERSION)
RETRIABLE_STATUS = [500, 504]


def lean_session(session: Any, environ: Any = os.environ) -> bool:
    """Stop requests from searching the environment at every request (a tenth of the
    worker's CPU: it walks every variable to find proxies), when the environment sets
    nothing that search would find but a CA bundle, which is then given once.

    What requests reads from the environment of a session that trusts it: proxies
    (``*_proxy``, ``no_proxy``), a netrc (``NETRC``, ``~/.netrc``) and, when the
    session verifies with the system's CAs, ``REQUESTS_CA_BUNDLE`` or
    ``CURL_CA_BUNDLE``. Returns whether the session was changed.
    """
    names = {name.lower() for name in environ}
    if any(name.endswith('_proxy') for name in names) or 'netrc' in names:
        return False
    home = environ.get('HOME') or os.path.expanduser('~')
    if any(os.path.exists(os.path.join(home, name)) for name in ('.netrc', '_netrc')):
        return False
    bundle = environ.get('REQUESTS_CA_BUNDLE') or environ.get('CURL_CA_BUNDLE')
    if bundle and session.verify is True:
        session.verify = bundle
    session.session.trust_env = False
    return True


def size_pools(session: Any, threads: int) -> None:
    """Keep a connection per thread that may call Cinder at once.

    requests keeps at most 10 idle connections per host (``pool_maxsize``, without
    blocking): with more threads than that, every connection beyond the tenth is
    closed when its call ends, so under load nearly every attach opened a new TCP
    connection to Cinder (measured: one connect per attach with 64 threads). The
    adapter stays keystoneauth1's (TCP keepalive) with everything it was given (the
    ``[cinder]`` tls_ciphers and tls_min_version, retries), with a pool as large as
    the thread pool.
    """
    size = max(threads, requests.adapters.DEFAULT_POOLSIZE)
    replaced: dict = {}  # one adapter serves http:// and https://
    for scheme, old in list(session.session.adapters.items()):
        if not isinstance(old, ks_session.TCPKeepAliveAdapter) or \
                old._pool_maxsize >= size:
            continue
        if id(old) not in replaced:
            replaced[id(old)] = ks_session.TCPKeepAliveAdapter(
                pool_connections=old._pool_connections, pool_maxsize=size,
                max_retries=old.max_retries, pool_block=old._pool_block,
                tls_ciphers=old.tls_ciphers, tls_min_version=old.tls_min_version)
        session.session.mount(scheme, replaced[id(old)])


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

    def __init__(self, conf: cfg.ConfigOpts, threads: int = 1) -> None:
        """``threads``: how many threads may call Cinder at once (the RPC server's
        thread pool)."""
        self._conf = conf
        self._session = ks_loading.load_session_from_conf_options(conf, 'cinder')
        metrics.instrument_session(self._session)
        lean_session(self._session)
        size_pools(self._session, threads)
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
        return CinderClient(once, retried, version, self._conf.cinder.attach_flow,
                            endpoint)


__all__ = ['CinderAPI', 'CinderClient', 'ServiceTokenAuth', 'translate']

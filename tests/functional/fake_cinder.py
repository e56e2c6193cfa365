"""A local stand-in for Cinder's Block Storage API v3 (functional tests only).

It answers what python-cinderclient 9.10.0 sends for a compute host attaching volumes
the way Cinder (2023.x and later, with the OSSA-2023-003 fix) does; the volume and
attachment behaviour is in ``fake_cinder_api``, the HTTP side here:

* ``GET /`` (300) and ``GET /v3/`` (200): the version document, ``min_version`` 3.0
  and ``version`` = ``max_version`` (3.71 unless lowered, e.g. to 3.27); no token needed.
* Everything else needs ``X-Auth-Token``: 401, as keystonemiddleware answers, when it is
  missing or rejected, or when ``X-Service-Token`` is rejected. The microversion comes
  from ``OpenStack-API-Version: volume 3.xx`` (none: 3.0, ``latest``: the maximum; 400
  if malformed, 406 out of range) and is echoed back, with ``x-openstack-request-id``.
* URLs with and without the project: ``/v3/{project_id}/volumes/{id}``, ``/v3/volumes/{id}``.
* Legacy ``POST /volumes/{id}/action`` (os-reserve, os-unreserve, os-initialize_connection,
  os-terminate_connection, os-attach, os-begin_detaching, os-roll_detaching, os-detach)
  and ``/attachments`` (3.27+; os-complete 3.44+; ``mode`` 3.54+), 404 when the
  microversion is too low, as Cinder. An attachment's ``connection_info`` is FLAT, as
  Cinder stores it (the ``data`` keys plus ``driver_volume_type`` and ``attachment_id``;
  Nova rebuilds ``{'driver_volume_type', 'data'}`` itself); os-initialize_connection
  answers the nested form.

In-process::

    server = FakeCinder(); server.start()    # server.url == 'http://127.0.0.1:PORT'
    vol = server.add_volume(multiattach=True)
    server.fail('PUT', r'^/attachments/', status=500, times=1)
    ...; server.requests[-1].path; server.volume(vol)['status']; server.stop()

As a process: ``python -m tests.functional.fake_cinder --port N`` prints the URL and
serves until SIGTERM; ``/_fake/...`` (see ``_control``) drives it from outside.
"""
import argparse
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
import json
import re
import signal
import socket
import sys
import threading
import traceback
from typing import Any
from typing import NamedTuple
from typing import Optional
from urllib.parse import parse_qs
from urllib.parse import urlsplit
import uuid

from tests.functional.fake_cinder_api import ROUTES
from tests.functional.fake_cinder_api import BlockStorage
from tests.functional.fake_cinder_api import CinderError
from tests.functional.fake_cinder_api import Req

MIN_VERSION, MAX_VERSION = '3.0', '3.71'
VERSION_PATHS = ('/', '/v3', '/v3/')
COLLECTIONS = ('volumes', 'attachments')  # /v3/volumes/x has no project id


class Call(NamedTuple):
    """One recorded request: ``path`` has no ``/v3[/{project_id}]`` prefix."""
    method: str
    path: str
    body: Any  # parsed JSON, None if empty
    headers: dict  # as sent; lookups ignore case


class _Hangup(Exception):
    pass


class Headers(dict):
    def _key(self, name: str) -> str:
        return next((k for k in self if k.lower() == name.lower()), name)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(self._key(name))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(self._key(name))

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(self._key(name), default)


def _version(text: str) -> tuple:
    match = re.fullmatch(r'([1-9]\d*)\.(0|[1-9]\d*)', text or '')
    if not match:
        raise CinderError(400, 'API Version String %s is of invalid format. Must be of '
                               'format MajorNum.MinorNum.' % text)
    return int(match.group(1)), int(match.group(2))


def _split(path: str) -> tuple:
    """``/v3/{project}/volumes/x`` and ``/v3/volumes/x`` -> ``('/volumes/x', project)``."""
    if path in VERSION_PATHS:
        return path, None
    parts = path.strip('/').split('/')
    if parts[0] != 'v3':
        return path, None
    project = parts[1] if len(parts) > 1 and parts[1] not in COLLECTIONS else None
    rest = parts[2:] if project else parts[1:]
    return '/' + '/'.join(rest), project


class FakeCinder(BlockStorage):
    """Stateful and thread-safe; every public method may be called while serving.

    Settable at any time: ``max_version``, ``min_version``, ``require_service_token``,
    ``chap_username``, ``chap_password``. ``add_volume()``, ``volume()`` and
    ``attachment()`` come from ``BlockStorage``. ``start()`` after ``stop()`` serves the
    same state on the same port again (a Cinder restart).
    """

    def __init__(self, host: str = '127.0.0.1', port: int = 0, *,
                 max_version: str = MAX_VERSION, min_version: str = MIN_VERSION,
                 require_service_token: bool = False, chap_username: str = 'fake-chap-user',
                 chap_password: str = 'fake-chap-secret') -> None:
        super().__init__(require_service_token, chap_username, chap_password,
                         threading.RLock())
        self.host, self.port = host, port
        self.max_version, self.min_version = max_version, min_version
        self._calls: list = []
        self._faults: list = []
        self._rejected: set = set()
        self._conns: set = set()
        self._stopping = threading.Event()
        self._httpd: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    # --- lifecycle -------------------------------------------------------------------
    @property
    def url(self) -> str:
        return 'http://%s:%d' % (self.host, self.port)

    def start(self) -> 'FakeCinder':
        self._stopping.clear()
        self._httpd = _Server((self.host, self.port), self)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        name='fake-cinder', daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; open keep-alive connections and delayed requests are cut."""
        if self._httpd is None:
            return
        self._stopping.set()
        self._httpd.shutdown()
        with self._lock:
            conns = list(self._conns)
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._httpd.server_close()
        self._thread.join(5)
        self._httpd = self._thread = None

    def __enter__(self) -> 'FakeCinder':
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- what tests set up and look at ---------------------------------------------------
    def fail(self, method: str, path_regex: str, status: Optional[int] = 500,
             times: Optional[int] = 1, delay: float = 0, *, action: Optional[str] = None,
             message: Optional[str] = None) -> None:
        """The next ``times`` matching requests (None: all) wait ``delay`` seconds, then
        answer ``status`` with a Cinder error body (``status=None``: are served normally).

        ``method`` '*' matches any; ``path_regex`` is searched in the recorded path;
        ``action`` matches the body's key on ``.../action`` requests (os-reserve...).
        """
        with self._lock:
            self._faults.append({'method': method.upper(), 'path': re.compile(path_regex),
                                 'status': status, 'times': times, 'delay': delay,
                                 'action': action, 'message': message})

    def reject_token(self, token: str) -> None:
        with self._lock:
            self._rejected.add(token)

    @property
    def requests(self) -> list:
        """Every request but ``/_fake/...``, in arrival order, as ``Call`` tuples."""
        with self._lock:
            return list(self._calls)

    def clear_requests(self) -> None:
        with self._lock:
            self._calls.clear()

    # --- HTTP plumbing ---------------------------------------------------------------------
    def _handle(self, h: '_Handler') -> None:
        split = urlsplit(h.path)
        raw = h.rfile.read(int(h.headers.get('Content-Length') or 0))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode('utf-8', 'replace')
        headers = Headers(h.headers.items())
        out = {'x-openstack-request-id': 'req-%s' % uuid.uuid4()}
        try:
            if split.path.startswith('/_fake/'):
                status, doc = self._control(h.command, split.path, body)
            else:
                path, project = _split(split.path)
                recorded = path + (split.query and '?' + split.query)
                with self._lock:
                    self._calls.append(Call(h.command, recorded, body, headers))
                status, doc = self._serve(h.command, split.path, path, project, body,
                                          headers, parse_qs(split.query), out)
        except CinderError as exc:
            status, doc = exc.status, exc.doc()
        except _Hangup:
            h.close_connection = True
            return
        except Exception:  # a bug here: say so loudly, answer as Cinder would
            traceback.print_exc()
            status, doc = 500, CinderError(500).doc()
        h.reply(status, doc, out)

    def _serve(self, method: str, raw_path: str, path: str, project: Optional[str], body: Any,
               headers: Headers, query: dict, out: dict) -> tuple:
        self._inject_fault(method, path, body)
        if raw_path in VERSION_PATHS:
            return self._versions(raw_path)
        token, service = headers.get('X-Auth-Token'), headers.get('X-Service-Token')
        with self._lock:
            if not token or token in self._rejected or service in self._rejected:
                out['WWW-Authenticate'] = 'Keystone uri="http://127.0.0.1/identity"'
                raise CinderError(401)
        version = self._microversion(headers.get('OpenStack-API-Version'))
        out.update({'OpenStack-API-Version': 'volume %d.%d' % version,
                    'Vary': 'OpenStack-API-Version'})
        req = Req(version, project, body, headers, query)
        for verb, pattern, handler, since in ROUTES:
            match = re.fullmatch(pattern, path)
            if verb == method and match:
                if since and version < since:  # VersionNotFoundForAPIMethod
                    raise CinderError(404)
                with self._lock:
                    return handler(self, req, **match.groupdict())
        raise CinderError(404)

    def _inject_fault(self, method: str, path: str, body: Any) -> None:
        action = next(iter(body), None) if isinstance(body, dict) else None
        with self._lock:
            for fault in self._faults:
                if (fault['times'] != 0 and fault['method'] in ('*', method)
                        and fault['path'].search(path)
                        and fault['action'] in (None, action)):
                    if fault['times'] is not None:
                        fault['times'] -= 1
                    break
            else:
                return
        if fault['delay'] and self._stopping.wait(fault['delay']):
            raise _Hangup()  # stopped while hanging: the client gets no answer
        if fault['status'] is not None:
            raise CinderError(fault['status'], fault['message'])

    def _versions(self, raw_path: str) -> tuple:
        doc = {'id': 'v3.0', 'status': 'CURRENT', 'version': self.max_version,
               'min_version': self.min_version, 'updated': '2023-08-31T00:00:00Z',
               'links': [{'rel': 'describedby', 'type': 'text/html',
                          'href': 'https://docs.openstack.org/'},
                         {'rel': 'self', 'href': self.url + '/v3/'}],
               'media-types': [{'base': 'application/json',
                                'type': 'application/vnd.openstack.volume+json;version=3'}]}
        return (300 if raw_path == '/' else 200), {'versions': [doc]}

    def _microversion(self, header: Optional[str]) -> tuple:
        low, high = _version(self.min_version), _version(self.max_version)
        wanted = None
        for item in (header or '').split(','):
            service, _, value = item.strip().partition(' ')
            if service.lower() == 'volume':
                wanted = value.strip()
        if not wanted:
            return low
        version = high if wanted == 'latest' else _version(wanted)
        if not low <= version <= high:
            raise CinderError(406, 'Version %s is not supported by the API. Minimum is %s '
                              'and maximum is %s.' % (wanted, self.min_version,
                                                      self.max_version))
        return version

    def _control(self, method: str, path: str, body: Any) -> tuple:
        """``/_fake/*``, for a FakeCinder in another process: no token, not recorded.

        POST volumes {add_volume kwargs} -> {"id"}; GET volumes/{id} -> volume();
        GET requests -> [[method, path, body, headers], ...]; POST fail {fail kwargs};
        POST reject_token {"token"}; PUT config {max_version, min_version,
        require_service_token, chap_username, chap_password}.
        """
        kwargs = body if isinstance(body, dict) else {}
        try:
            if (method, path) == ('POST', '/_fake/volumes'):
                return 200, {'id': self.add_volume(**kwargs)}
            if method == 'GET' and path.startswith('/_fake/volumes/'):
                if path.rsplit('/', 1)[1] not in self._volumes:
                    raise CinderError(404)
                return 200, self.volume(path.rsplit('/', 1)[1])
            if (method, path) == ('GET', '/_fake/requests'):
                return 200, [list(call) for call in self.requests]
            if (method, path) == ('POST', '/_fake/fail'):
                return 204, self.fail(**kwargs)
            if (method, path) == ('POST', '/_fake/reject_token'):
                return 204, self.reject_token(kwargs['token'])
            if (method, path) == ('PUT', '/_fake/config'):
                known = ('max_version', 'min_version', 'require_service_token',
                         'chap_username', 'chap_password')
                for key, value in kwargs.items():
                    if key not in known:
                        raise KeyError(key)
                    setattr(self, key, value)
                return 204, None
        except (KeyError, TypeError) as exc:
            raise CinderError(400, 'fake control: %r' % exc) from exc
        raise CinderError(404)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'  # keep-alive, as keystoneauth's pool expects
    server_version = 'FakeCinder/1.0'

    def do_GET(self) -> None:
        self.server.fake._handle(self)

    do_POST = do_PUT = do_DELETE = do_GET

    def reply(self, status: int, doc: Any, headers: dict) -> None:
        data = b'' if doc is None else json.dumps(doc).encode()
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if data:
            self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog (5) refuses connections when 64 worker threads
    # open new ones at once (urllib3 keeps 10 per pool): a stand-in must not
    request_queue_size = 256
    allow_reuse_address = True

    def __init__(self, address: tuple, fake: FakeCinder) -> None:
        self.fake = fake
        super().__init__(address, _Handler)

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        with self.fake._lock:
            self.fake._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:
        with self.fake._lock:
            self.fake._conns.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not self.fake._stopping.is_set():  # cut connections are expected when stopping
            super().handle_error(request, client_address)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--host', default='127.0.0.1')
    parser.add_argument('--port', type=int, default=0)
    parser.add_argument('--max-version', default=MAX_VERSION)
    parser.add_argument('--min-version', default=MIN_VERSION)
    parser.add_argument('--require-service-token', action='store_true')
    parser.add_argument('--chap-password', default='fake-chap-secret')
    args = parser.parse_args(argv)
    server = FakeCinder(args.host, args.port, max_version=args.max_version,
                        min_version=args.min_version, chap_password=args.chap_password,
                        require_service_token=args.require_service_token)
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    server.start()
    print(server.url, flush=True)
    while not done.wait(0.5):
        pass
    server.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main())

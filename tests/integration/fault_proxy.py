"""A loopback HTTP proxy in front of cinder-api that injects faults on chosen requests.

The worker is pointed at the proxy (``[cinder] endpoint_template``); everything it
sends is forwarded to the real cinder-api unless a ``Rule`` matches. A rule picks
requests by method, path regex, the top-level key of a JSON body (``os-reserve``)
and the ``X-OpenStack-Request-ID`` header (the worker sends the cast's request id,
so rules for parallel casts never see each other's requests). It acts on its
``nth`` .. ``nth + times - 1`` matches:

* ``status=503``: answer 503 with a Cinder-style JSON fault, never forwarding;
* ``hang=10``: forward, then hold Cinder's answer 10 s (Cinder did the work, the
  client does not know); ``hang_before=True`` holds 10 s *before* forwarding;
  ``forward=False`` with a hang holds and then closes the connection unanswered.

Every request is recorded (``Record``). Standard library only::

    with FaultProxy() as proxy:
        proxy.add('POST', r'/volumes/[^/]+/action$', action='os-reserve', status=500,
                  request_id=ctxt.request_id)
        ... endpoint_template = proxy.url + '/v3/%(project_id)s'
        proxy.records(ctxt.request_id)  # [Record(method='GET', path=..., status=200), ...]
"""
import dataclasses
import http.client
import http.server
import json
import re
import threading
import time
from typing import Optional
import uuid

HOP_BY_HOP = {'connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization',
              'te', 'trailers', 'transfer-encoding', 'upgrade'}
#: Cinder's fault names (cinder.api.openstack.wsgi.Fault); anything else is computeFault.
FAULT_NAMES = {400: 'badRequest', 404: 'itemNotFound', 409: 'conflictingRequest',
               413: 'overLimit', 503: 'serviceUnavailable'}


@dataclasses.dataclass
class Rule:
    """Which requests to disturb, and how."""

    method: str
    path: str
    action: Optional[str] = None
    request_id: Optional[str] = None
    status: Optional[int] = None
    hang: float = 0.0
    hang_before: bool = False
    forward: bool = True
    nth: int = 1
    times: int = 1
    matched: int = 0
    injected: int = 0

    def matches(self, method: str, path: str, action: Optional[str],
                request_id: Optional[str]) -> bool:
        return (method == self.method and re.search(self.path, path) is not None
                and (self.action is None or action == self.action)
                and (self.request_id is None or request_id == self.request_id))

    def describe(self) -> str:
        if self.status and not self.hang:
            return str(self.status)
        if self.status:
            return 'hang %gs then %s' % (self.hang, self.status)
        if not self.forward:
            return 'hang %gs then drop' % self.hang
        return 'hang %gs%s' % (self.hang, ' before forwarding' if self.hang_before else '')


@dataclasses.dataclass
class Record:
    """One request as the proxy saw it; ``status`` is what the client was sent."""

    method: str
    path: str
    action: Optional[str]
    request_id: Optional[str]
    fault: Optional[str] = None
    status: Optional[int] = None
    delivered: bool = False
    finished: bool = False
    at: float = 0.0
    seconds: float = 0.0


class FaultProxy:
    """Thread-safe; ``start()``/``stop()`` or a ``with`` block.

    Every rule that matches a request counts it; the first one whose turn it is
    disturbs it.
    """

    def __init__(self, upstream_host: str = '127.0.0.1', upstream_port: int = 8776,
                 upstream_timeout: float = 120) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.upstream_timeout = upstream_timeout
        self._lock = threading.Lock()
        self._rules: list = []
        self._records: list = []
        self._stopping = threading.Event()
        self._server: Optional[http.server.ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # --- life cycle ----------------------------------------------------------------------
    def start(self) -> 'FaultProxy':
        self._server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name='fault-proxy', daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes every hang
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(10)
            self._server = None

    def __enter__(self) -> 'FaultProxy':
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return 'http://127.0.0.1:%d' % self.port

    # --- rules and records ---------------------------------------------------------------
    def add(self, method: str, path: str, **how) -> Rule:
        """Add a rule (see ``Rule``); rules are tried in the order they were added."""
        rule = Rule(method.upper(), path, **how)
        if rule.status is None and not rule.hang:
            raise ValueError('a rule needs a status, a hang or both')
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self._records.clear()

    def records(self, request_id: Optional[str] = None) -> list:
        with self._lock:
            return [dataclasses.replace(r) for r in self._records
                    if request_id is None or r.request_id == request_id]

    def _pick(self, record: Record) -> Optional[Rule]:
        """The rule that disturbs this request, if any (counts the match)."""
        picked = None
        with self._lock:
            self._records.append(record)
            for rule in self._rules:
                if rule.matches(record.method, record.path, record.action,
                                record.request_id):
                    rule.matched += 1
                    if picked is None and rule.nth <= rule.matched < rule.nth + rule.times:
                        rule.injected += 1
                        record.fault = rule.describe()
                        picked = rule
        return picked

    def _wait(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    # --- forwarding ----------------------------------------------------------------------
    def _forward(self, method: str, target: str, headers: list, body: bytes) -> tuple:
        conn = http.client.HTTPConnection(*self.upstream, timeout=self.upstream_timeout)
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                if name.lower() not in HOP_BY_HOP and name.lower() != 'content-length':
                    conn.putheader(name, value)
            conn.putheader('Content-Length', str(len(body)))
            conn.putheader('Connection', 'close')
            conn.endheaders(body)
            resp = conn.getresponse()
            payload = resp.read()
            kept = [(k, v) for k, v in resp.getheaders()
                    if k.lower() not in HOP_BY_HOP
                    and k.lower() not in ('content-length', 'server', 'date')]
            return resp.status, resp.reason, kept, payload
        finally:
            conn.close()


def cinder_fault(status: int, message: str) -> bytes:
    name = FAULT_NAMES.get(status, 'computeFault')
    return json.dumps({name: {'message': message, 'code': status}}).encode()


def _action_of(body: bytes, content_type: str) -> Optional[str]:
    if not body or 'json' not in content_type:
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    if isinstance(parsed, dict) and len(parsed) == 1:
        return next(iter(parsed))
    return None


def _handler_for(proxy: FaultProxy) -> type:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = 'HTTP/1.1'
        timeout = 120  # an idle keep-alive connection is closed after that

        def log_message(self, fmt: str, *args) -> None:
            pass  # the records say it all

        def _body(self) -> bytes:
            if 'chunked' in self.headers.get('Transfer-Encoding', '').lower():
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b';')[0].strip() or b'0', 16)
                    if size == 0:
                        while self.rfile.readline() not in (b'\r\n', b'\n', b''):
                            pass
                        return b''.join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get('Content-Length') or 0))

        def _reply(self, status: int, reason: Optional[str], headers: list,
                   payload: bytes, record: Record) -> None:
            record.status = status
            try:
                self.send_response(status, reason)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header('Content-Length', str(len(payload)))
                self.end_headers()
                if self.command != 'HEAD':
                    self.wfile.write(payload)
                self.wfile.flush()
                record.delivered = True
            except OSError:  # the client gave up (a timeout): nothing to answer
                self.close_connection = True

        def _serve(self) -> None:
            started = time.monotonic()
            body = self._body()
            path = self.path.split('?', 1)[0]
            record = Record(self.command, path,
                            _action_of(body, self.headers.get('Content-Type', '')),
                            self.headers.get('X-OpenStack-Request-ID'), at=time.time())
            rule = proxy._pick(record)
            try:
                if rule is not None and (rule.status is not None or rule.hang_before
                                         or not rule.forward):
                    proxy._wait(rule.hang)
                if rule is not None and rule.status is not None:
                    message = 'Injected by the fault proxy: HTTP %d' % rule.status
                    self._reply(rule.status, None,
                                [('Content-Type', 'application/json'),
                                 ('X-OpenStack-Request-ID', 'req-%s' % uuid.uuid4())],
                                cinder_fault(rule.status, message), record)
                    return
                if rule is not None and not rule.forward:
                    self.close_connection = True  # held, then dropped unanswered
                    return
                try:
                    status, reason, headers, payload = proxy._forward(
                        self.command, self.path, self.headers.items(), body)
                except OSError as exc:
                    status, reason, payload = 502, 'Bad Gateway', cinder_fault(
                        502, 'fault proxy: cinder-api unreachable: %s' % exc)
                    headers = [('Content-Type', 'application/json')]
                record.status = status  # what Cinder answered, even while it is held
                if rule is not None and not rule.hang_before:
                    proxy._wait(rule.hang)
                self._reply(status, reason, headers, payload, record)
            finally:
                record.seconds = time.monotonic() - started
                record.finished = True

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve

    return Handler

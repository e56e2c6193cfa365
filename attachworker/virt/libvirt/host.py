"""The libvirt connection, libvirt's event loop, and waits for device events.

This is the one module that imports the libvirt bindings (tests replace
``host.libvirt`` with a fake). libvirt delivers domain events only to a process
that registered an event loop implementation *before* opening the connection:
``start_event_loop`` registers libvirt's default implementation and runs
``virEventRunDefaultImpl`` in a daemon thread, once per process.

The connection is opened on first use, with callbacks for the device-removed and
device-removal-failed events of every domain and for the connection's close. A
connection that closed (libvirtd restarted) or that a call found broken is dropped,
and the next call opens a new one.
"""
import contextlib
import threading
import time
from typing import Any
from typing import Callable
from typing import Iterator
from typing import Optional

from oslo_log import log as logging
from oslo_utils import importutils
from oslo_utils import strutils

from attachworker.virt.libvirt import errors

LOG = logging.getLogger(__name__)

libvirt = importutils.try_import('libvirt')

REMOVED = 'removed'
REMOVAL_FAILED = 'removal-failed'

_loop_lock = threading.Lock()
_loops: list = []  # the libvirt modules whose default event loop runs in this process


def _ignore_libvirt_error(ctxt: Any, err: Any) -> None:
    """libvirt prints every error to stderr by default; ours are raised and logged."""


def _run_event_loop(module: Any) -> None:
    while True:
        try:
            module.virEventRunDefaultImpl()
        except Exception:  # noqa: BLE001 - the loop must outlive any one failure
            time.sleep(0.1)


def start_event_loop() -> None:
    """Register libvirt's default event loop and run it in a daemon thread, once."""
    with _loop_lock:
        if any(module is libvirt for module in _loops):
            return
        libvirt.registerErrorHandler(_ignore_libvirt_error, None)
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=_run_event_loop, args=(libvirt,), daemon=True,
                         name='libvirt-event-loop').start()
        _loops.append(libvirt)


def error_text(exc: Exception) -> str:
    """libvirt's message for ``exc`` (masked: it never holds a key, but be sure)."""
    message = None
    if libvirt is not None and isinstance(exc, libvirt.libvirtError):
        message = exc.get_error_message()
    return strutils.mask_password(message or str(exc))


def error_code(exc: Exception) -> Optional[int]:
    if libvirt is not None and isinstance(exc, libvirt.libvirtError):
        return exc.get_error_code()
    return None


def connection_lost(exc: Exception) -> bool:
    """Did ``exc`` come from a connection that broke (libvirtd gone, socket closed)?"""
    return (error_code(exc) in (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_INTERNAL_ERROR)
            and exc.get_error_domain() in (libvirt.VIR_FROM_REMOTE, libvirt.VIR_FROM_RPC))


class Waiter:
    def __init__(self, instance_uuid: str, alias: str) -> None:
        self.instance_uuid = instance_uuid
        self.alias = alias
        self.result: Optional[str] = None
        self.event = threading.Event()


class DeviceEvents:
    """Device events of the libvirt event thread, handed to the threads waiting."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set = set()

    def waiter(self, instance_uuid: str, alias: str) -> Waiter:
        """Register interest before asking for the detach, so no event is missed."""
        waiter = Waiter(instance_uuid, alias)
        with self._lock:
            self._waiters.add(waiter)
        return waiter

    def cancel(self, waiter: Waiter) -> None:
        with self._lock:
            self._waiters.discard(waiter)

    def wait(self, waiter: Waiter, timeout: float) -> Optional[str]:
        """REMOVED, REMOVAL_FAILED, or None when ``timeout`` seconds passed first."""
        waiter.event.wait(timeout)
        self.cancel(waiter)
        return waiter.result

    def notify(self, instance_uuid: str, alias: str, result: str) -> None:
        with self._lock:
            for waiter in self._waiters:
                if (waiter.instance_uuid, waiter.alias) == (instance_uuid, alias):
                    waiter.result = result
                    waiter.event.set()


class Host:
    """One libvirt connection, opened lazily and reopened after it broke."""

    def __init__(self, uri: str) -> None:
        if libvirt is None:
            raise errors.LibvirtNotInstalled(reason='"import libvirt" failed')
        self.uri = uri
        self.events = DeviceEvents()
        self._lock = threading.Lock()
        self._conn: Any = None
        self.opened = 0  # connections opened so far (for logs and tests)

    # --- callbacks: run in the event loop thread, they only hand the event over ---

    def _device_removed(self, conn: Any, dom: Any, alias: str, opaque: Any) -> None:
        self.events.notify(dom.UUIDString(), alias, REMOVED)

    def _device_removal_failed(self, conn: Any, dom: Any, alias: str, opaque: Any) -> None:
        self.events.notify(dom.UUIDString(), alias, REMOVAL_FAILED)

    def _closed(self, conn: Any, reason: int, opaque: Any) -> None:
        if self._conn is conn:
            self._conn = None  # the next call opens a new connection

    # --- the connection ---------------------------------------------------------------

    def _open(self) -> Any:
        start_event_loop()  # before the connection, or libvirt sends it no events
        LOG.debug('Connecting to libvirt at %s', self.uri)
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise errors.HypervisorUnavailable(uri=self.uri, reason=error_text(exc)) from exc
        for event_id, callback in (
                (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, self._device_removed),
                (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED,
                 self._device_removal_failed)):
            try:
                conn.domainEventRegisterAny(None, event_id, callback, None)
            except libvirt.libvirtError as exc:
                LOG.warning('libvirt at %(uri)s sends no device events (%(err)s): a detach '
                            'will wait its full [libvirt] device_detach_timeout',
                            {'uri': self.uri, 'err': error_text(exc)})
        try:
            conn.registerCloseCallback(self._closed, None)
        except libvirt.libvirtError as exc:
            LOG.warning('libvirt at %(uri)s reports no connection close: %(err)s',
                        {'uri': self.uri, 'err': error_text(exc)})
        self.opened += 1
        LOG.info('Connected to libvirt at %s', self.uri)
        return conn

    def connection(self) -> Any:
        with self._lock:
            conn = self._conn
            if conn is not None:
                try:
                    alive = conn.isAlive()
                except libvirt.libvirtError:
                    alive = False
                if not alive:
                    LOG.warning('The connection to libvirt at %s was lost: reconnecting',
                                self.uri)
                    self._conn = conn = None
            if conn is None:
                self._conn = conn = self._open()
            return conn

    def drop(self, conn: Any = None) -> None:
        """Forget the connection (``conn``, if given: only that one)."""
        with self._lock:
            if conn is None or self._conn is conn:
                self._conn = None

    @contextlib.contextmanager
    def call(self, action: str) -> Iterator[None]:
        """libvirt errors of the block become LibvirtCallFailed(action, libvirt's
        message); a broken connection is dropped first, so the next call reconnects."""
        try:
            yield
        except libvirt.libvirtError as exc:
            if connection_lost(exc):
                LOG.warning('The connection to libvirt at %(uri)s broke during "%(what)s": '
                            '%(err)s', {'uri': self.uri, 'what': action,
                                        'err': error_text(exc)})
                self.drop()
            raise errors.LibvirtCallFailed(action=action, reason=error_text(exc)) from exc

    def read(self, action: str, fn: Callable[[Any], Any]) -> Any:
        """``fn(connection)`` for calls that change nothing: retried once on a new
        connection when the connection broke under it."""
        for attempt in (1, 2):
            conn = self.connection()
            try:
                return fn(conn)
            except libvirt.libvirtError as exc:
                if attempt == 1 and connection_lost(exc):
                    self.drop(conn)
                    continue
                with self.call(action):
                    raise

    def domain(self, instance_uuid: str) -> Optional[Any]:
        """The instance's domain, or None when this host has no domain with its UUID."""
        def lookup(conn: Any) -> Optional[Any]:
            try:
                return conn.lookupByUUIDString(instance_uuid)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise
        return self.read('look up the domain of instance %s' % instance_uuid, lookup)

    def require_domain(self, instance_uuid: str) -> Any:
        dom = self.domain(instance_uuid)
        if dom is None:
            raise errors.InstanceNotFound(instance_uuid=instance_uuid, uri=self.uri)
        return dom

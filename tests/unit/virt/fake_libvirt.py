"""A fake of the ``libvirt`` module: what the libvirt driver calls, with libvirt's rules.

``FakeLibvirt()`` stands in for the module (tests patch ``host.libvirt`` with it).
Domains keep their live and persistent XML as text; device hot-plug follows
libvirt's flag rules (LIVE needs a running domain, CONFIG a persistent one, a
target is used once); metadata elements come back as libvirt returns them;
events are queued for the default event loop and only delivered while a thread
runs ``virEventRunDefaultImpl`` (and only if ``virEventRegisterDefaultImpl`` came
before the connection asked for them). ``FakeGuest.mode`` says how the guest
answers a live detach:

* ``'ack'``: the disk goes, DEVICE_REMOVED is sent (virtio-scsi, or a guest that
  cooperates);
* ``'never'``: nothing happens (a guest ignoring the ACPI request); a request while
  one is pending fails "already in the process of unplug" if ``busy_error``;
* ``'fail'``: DEVICE_REMOVAL_FAILED is sent, the disk stays;
* ``'late'``: the disk goes at the ``late_after``-th request;
* ``'silent'``: the disk goes but no event is sent;
* ``'delayed'``: the disk goes ``delay`` seconds later, then DEVICE_REMOVED is sent.
"""
import copy
import queue
import threading
from xml.etree import ElementTree as ET


class libvirtError(Exception):  # noqa: N801 - libvirt's name
    def __init__(self, msg, code=1, domain=10):
        super().__init__(msg)
        self._msg, self._code, self._domain = msg, code, domain

    def get_error_code(self):
        return self._code

    def get_error_domain(self):
        return self._domain

    def get_error_message(self):
        return self._msg


class FakeLibvirt:
    libvirtError = libvirtError
    VIR_DOMAIN_AFFECT_CURRENT = 0
    VIR_DOMAIN_AFFECT_LIVE = 1
    VIR_DOMAIN_AFFECT_CONFIG = 2
    VIR_DOMAIN_XML_SECURE = 1
    VIR_DOMAIN_XML_INACTIVE = 2
    VIR_DOMAIN_METADATA_ELEMENT = 2
    VIR_DOMAIN_BLOCK_RESIZE_BYTES = 1
    VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED = 15
    VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED = 22
    VIR_ERR_INTERNAL_ERROR = 1
    VIR_ERR_OPERATION_FAILED = 9
    VIR_ERR_XML_ERROR = 27
    VIR_ERR_SYSTEM_ERROR = 38
    VIR_ERR_NO_DOMAIN = 42
    VIR_ERR_OPERATION_INVALID = 55
    VIR_ERR_NO_DOMAIN_METADATA = 80
    VIR_ERR_DEVICE_MISSING = 99
    VIR_FROM_RPC = 7
    VIR_FROM_QEMU = 10
    VIR_FROM_REMOTE = 13

    def __init__(self):
        self.guests = {}
        self.calls = []          # module-level calls, in order
        self.connections = []
        self.callbacks = []      # (connection, event id, callback, opaque)
        self.refuse_connections = False
        self.event_impl_registered = False
        self._events = queue.Queue()
        self.lock = threading.RLock()

    # --- the module's functions -------------------------------------------------------
    def registerErrorHandler(self, f, ctx):  # noqa: N802
        self.calls.append('registerErrorHandler')

    def virEventRegisterDefaultImpl(self):  # noqa: N802
        self.calls.append('virEventRegisterDefaultImpl')
        self.event_impl_registered = True

    def virEventRunDefaultImpl(self):  # noqa: N802
        job = self._events.get()
        job()
        return 0

    def open(self, uri):
        self.calls.append('open')
        if self.refuse_connections:
            raise libvirtError("Failed to connect socket to '/run/libvirt/libvirt-sock': "
                               'No such file or directory', self.VIR_ERR_SYSTEM_ERROR,
                               self.VIR_FROM_RPC)
        conn = FakeConnection(self, uri)
        self.connections.append(conn)
        return conn

    # --- test helpers ---------------------------------------------------------------
    def define(self, uuid, xml, active=True, persistent=True):
        guest = FakeGuest(self, uuid, xml, active, persistent)
        self.guests[uuid] = guest
        return guest

    def emit(self, guest, event_id, alias):
        for conn, wanted, callback, opaque in list(self.callbacks):
            if wanted == event_id and conn.alive:
                dom = FakeDomain(conn, guest)
                self._events.put(lambda c=conn, d=dom, cb=callback, o=opaque: cb(c, d, alias, o))

    def break_connections(self):
        """libvirtd went away: every connection is dead and says so."""
        for conn in self.connections:
            if conn.alive:
                conn.alive = False
                if conn.close_callback:
                    cb, opaque = conn.close_callback
                    self._events.put(lambda c=conn, cb=cb, o=opaque: cb(c, 0, o))


class FakeConnection:
    def __init__(self, lib, uri):
        self.lib, self.uri, self.alive, self.close_callback = lib, uri, True, None

    def _check(self):
        if not self.alive:
            raise libvirtError('Cannot write data: Broken pipe', FakeLibvirt.VIR_ERR_SYSTEM_ERROR,
                               FakeLibvirt.VIR_FROM_RPC)

    def isAlive(self):  # noqa: N802
        return 1 if self.alive else 0

    def lookupByUUIDString(self, uuid):  # noqa: N802
        self._check()
        guest = self.lib.guests.get(uuid)
        if guest is None:
            raise libvirtError("Domain not found: no domain with matching uuid '%s'" % uuid,
                               FakeLibvirt.VIR_ERR_NO_DOMAIN)
        return FakeDomain(self, guest)

    def listAllDomains(self, flags=0):  # noqa: N802
        self._check()
        return [FakeDomain(self, g) for g in self.lib.guests.values()]

    def domainEventRegisterAny(self, dom, event_id, cb, opaque):  # noqa: N802
        self._check()
        if not self.lib.event_impl_registered:
            raise libvirtError('internal error: could not initialize domain event timer')
        self.lib.callbacks.append((self, event_id, cb, opaque))
        return len(self.lib.callbacks)

    def defineXML(self, xml):  # noqa: N802
        """Replace the persistent definition of a known domain (what refresh uses)."""
        self._check()
        root = ET.fromstring(xml)
        guest = self.lib.guests.get(root.findtext('uuid'))
        assert guest is not None, 'the fake only redefines domains it has'
        with self.lib.lock:
            guest.requests.append(('defineXML', xml, 0))
            guest.persistent = True
            guest.config = ET.tostring(root, encoding='unicode')
        return FakeDomain(self, guest)

    def registerCloseCallback(self, cb, opaque):  # noqa: N802
        self._check()
        self.close_callback = (cb, opaque)
        return 0

    def close(self):
        self.alive = False
        return 0


def _alias(disk, index):
    bus = disk.find('target').get('bus')
    return {'virtio': 'virtio-disk%d' % index, 'ide': 'ide0-0-%d' % index}.get(
        bus, 'scsi0-0-0-%d' % index)


class FakeGuest:
    """The hypervisor's state of one domain."""

    def __init__(self, lib, uuid, xml, active, persistent):
        self.lib, self.uuid = lib, uuid
        self.active, self.persistent = active, persistent
        self.config = xml if persistent else None
        self.live = None
        self.meta = {'live': {}, 'config': {}}
        self.mode, self.late_after, self.busy_error, self.delay = 'ack', 2, False, 0.3
        self.attach_error = None      # raised by the next attachDeviceFlags
        self.resize_error = None      # raised by the next blockResize
        self.sizes = {}               # target -> bytes QEMU sees (1 GiB unless set)
        self.resizes = []             # (disk, size, flags) of every blockResize
        self.requests = []            # (method, xml, flags)
        self.live_detach_requests = 0
        self._pending = set()
        self._next_alias = 0
        if active:
            self._boot(xml)

    def _boot(self, xml):
        root = ET.fromstring(xml)
        for disk in root.iterfind('./devices/disk'):
            self._give_alias(disk)
        self.live = ET.tostring(root, encoding='unicode')
        self.meta['live'] = copy.deepcopy(self.meta['config'])

    def _give_alias(self, disk):
        if disk.find('alias') is None:
            ET.SubElement(disk, 'alias', name=_alias(disk, self._next_alias))
        self._next_alias += 1

    def stop(self):
        with self.lib.lock:
            if not self.persistent:
                del self.lib.guests[self.uuid]
            self.active, self.live, self.meta['live'] = False, None, {}

    def start(self):
        with self.lib.lock:
            self.active = True
            self._boot(self.config)

    def remove(self, target, alias, event):
        """The guest let go of the disk."""
        with self.lib.lock:
            root = ET.fromstring(self.live)
            root.find('devices').remove(_find(root, target))
            self.set_xml('live', root)
            self._pending.discard(target)
        if event:
            self.lib.emit(self, FakeLibvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, alias)

    def xml(self, which):
        return self.live if which == 'live' else self.config

    def set_xml(self, which, root):
        text = ET.tostring(root, encoding='unicode')
        if which == 'live':
            self.live = text
        else:
            self.config = text

    def affected(self, flags, verb):
        lib = FakeLibvirt
        if flags == lib.VIR_DOMAIN_AFFECT_CURRENT:
            flags = lib.VIR_DOMAIN_AFFECT_LIVE if self.active else lib.VIR_DOMAIN_AFFECT_CONFIG
        which = []
        if flags & lib.VIR_DOMAIN_AFFECT_LIVE:
            if not self.active:
                raise libvirtError('Requested operation is not valid: domain is not running',
                                   lib.VIR_ERR_OPERATION_INVALID)
            which.append('live')
        if flags & lib.VIR_DOMAIN_AFFECT_CONFIG:
            if not self.persistent:
                raise libvirtError('Requested operation is not valid: cannot %s a transient '
                                   'domain' % verb, lib.VIR_ERR_OPERATION_INVALID)
            which.append('config')
        return which


def _find(root, target):
    for disk in root.iterfind('./devices/disk'):
        if disk.find('target').get('dev') == target:
            return disk
    return None


class FakeDomain:
    """A virDomain: a handle on a FakeGuest through one connection."""

    def __init__(self, conn, guest):
        self._conn, self.guest = conn, guest

    def _check(self):
        self._conn._check()
        if self.guest.lib.guests.get(self.guest.uuid) is not self.guest:
            raise libvirtError("Domain not found: no domain with matching uuid '%s'"
                               % self.guest.uuid, FakeLibvirt.VIR_ERR_NO_DOMAIN)

    def connect(self):
        return self._conn

    def UUIDString(self):  # noqa: N802
        return self.guest.uuid

    def isActive(self):  # noqa: N802
        self._check()
        return 1 if self.guest.active else 0

    def isPersistent(self):  # noqa: N802
        self._check()
        return 1 if self.guest.persistent else 0

    def XMLDesc(self, flags=0):  # noqa: N802
        self._check()
        g = self.guest
        if flags & FakeLibvirt.VIR_DOMAIN_XML_INACTIVE and g.persistent:
            xml = g.config
        else:
            xml = g.live if g.active else g.config
        if flags & FakeLibvirt.VIR_DOMAIN_XML_SECURE:
            return xml
        # as libvirt: console passwords only with VIR_DOMAIN_XML_SECURE
        root = ET.fromstring(xml)
        for graphics in root.iter('graphics'):
            graphics.attrib.pop('passwd', None)
        return ET.tostring(root, encoding='unicode')

    def attachDeviceFlags(self, xml, flags=0):  # noqa: N802
        self._check()
        g = self.guest
        with g.lib.lock:
            g.requests.append(('attach', xml, flags))
            which = g.affected(flags, 'modify device on')
            disk = ET.fromstring(xml)
            target = disk.find('target').get('dev')
            for name in which:
                if _find(ET.fromstring(g.xml(name)), target) is not None:
                    raise libvirtError('Requested operation is not valid: target %s already '
                                       'exists' % target, FakeLibvirt.VIR_ERR_OPERATION_INVALID)
            if g.attach_error is not None:
                error, g.attach_error = g.attach_error, None
                raise error
            for name in which:
                root = ET.fromstring(g.xml(name))
                element = copy.deepcopy(disk)
                if name == 'live':
                    g._give_alias(element)
                root.find('devices').append(element)
                g.set_xml(name, root)
        return 0

    def detachDeviceFlags(self, xml, flags=0):  # noqa: N802
        self._check()
        g = self.guest
        with g.lib.lock:
            g.requests.append(('detach', xml, flags))
            which = g.affected(flags, 'modify device on')
            target = ET.fromstring(xml).find('target').get('dev')
            for name in which:
                if _find(ET.fromstring(g.xml(name)), target) is None:
                    raise libvirtError('device not found: no target device %s' % target,
                                       FakeLibvirt.VIR_ERR_DEVICE_MISSING)
            if 'config' in which:
                root = ET.fromstring(g.config)
                root.find('devices').remove(_find(root, target))
                g.set_xml('config', root)
            if 'live' in which:
                self._unplug(target)
        return 0

    def _unplug(self, target):
        g = self.guest
        g.live_detach_requests += 1
        root = ET.fromstring(g.live)
        disk = _find(root, target)
        alias = disk.find('alias').get('name')
        lib = FakeLibvirt
        if g.mode == 'never' or (g.mode == 'late' and g.live_detach_requests < g.late_after):
            if target in g._pending and g.busy_error:
                raise libvirtError("internal error: unable to execute QEMU command 'device_del':"
                                   ' Device %s is already in the process of unplug' % alias,
                                   lib.VIR_ERR_INTERNAL_ERROR, lib.VIR_FROM_QEMU)
            g._pending.add(target)
            return
        if g.mode == 'fail':
            g.lib.emit(g, lib.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED, alias)
            return
        if g.mode == 'delayed':
            g._pending.add(target)
            threading.Timer(g.delay, g.remove, args=(target, alias, True)).start()
            return
        g.remove(target, alias, g.mode != 'silent')

    def _live_disk(self, target):
        g = self.guest
        if not g.active:
            raise libvirtError('Requested operation is not valid: domain is not running',
                               FakeLibvirt.VIR_ERR_OPERATION_INVALID)
        if _find(ET.fromstring(g.live), target) is None:
            raise libvirtError("invalid argument: invalid path %s not assigned to domain"
                               % target, 8)

    def blockInfo(self, path, flags=0):  # noqa: N802
        self._check()
        self._live_disk(path)
        size = self.guest.sizes.get(path, 1024 ** 3)
        return [size, size, size]

    def blockResize(self, disk, size, flags=0):  # noqa: N802
        self._check()
        g = self.guest
        with g.lib.lock:
            g.resizes.append((disk, size, flags))
            self._live_disk(disk)
            if g.resize_error is not None:
                error, g.resize_error = g.resize_error, None
                raise error
            assert flags & FakeLibvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES, 'size in KiB?'
            g.sizes[disk] = size
        return 0

    def metadata(self, type, uri, flags=0):  # noqa: A002 - libvirt's name
        self._check()
        g = self.guest
        [which] = g.affected(flags, 'read metadata of')
        stored = g.meta[which].get(uri)
        if stored is None:
            raise libvirtError('metadata not found: Requested metadata element is not present',
                               FakeLibvirt.VIR_ERR_NO_DOMAIN_METADATA)
        # libvirt 9.0 (checked with its test:///default driver) answers the element
        # without its namespace, as it was given
        return ET.tostring(ET.fromstring(stored), encoding='unicode')

    def setMetadata(self, type, metadata, key, uri, flags=0):  # noqa: N802, A002
        self._check()
        g = self.guest
        assert type == FakeLibvirt.VIR_DOMAIN_METADATA_ELEMENT
        with g.lib.lock:
            g.requests.append(('setMetadata', metadata, flags))
            which = g.affected(flags, 'modify metadata of')
            if metadata is not None:
                try:
                    ET.fromstring(metadata)
                except ET.ParseError as exc:
                    raise libvirtError('XML error: %s' % exc,
                                       FakeLibvirt.VIR_ERR_XML_ERROR) from exc
                assert key, 'libvirt needs a namespace prefix'
            for name in which:
                if metadata is None:
                    g.meta[name].pop(uri, None)
                else:
                    g.meta[name][uri] = metadata
        return 0

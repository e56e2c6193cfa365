"""What the Cinder stand-in does with a request: volume and attachment state (tests only).

``fake_cinder.FakeCinder`` adds the HTTP side (auth, microversions, faults, recording).
Every handler runs with ``self._lock`` held and answers ``(status, body)`` or raises
``CinderError``; bodies and messages are Cinder's (2023.x, with the OSSA-2023-003 fix).

State a test can see through ``volume()`` / ``attachment()``:

* volume: id, status, attach_status, multiattach, availability_zone, project_id, size,
  name, shared_targets, service_uuid, created_at, attachments (the records below);
* attachment: id, volume_id, instance_uuid, attach_status, attach_mode, connector,
  connection_info, attached_host, mountpoint, attach_time, detach_time.

Volume statuses, as Cinder moves them:

* legacy: available -os-reserve-> attaching -os-attach-> in-use -os-begin_detaching->
  detaching -os-detach-> available; os-unreserve and os-terminate_connection (which
  unreserves too) go back from attaching, os-roll_detaching from detaching.
* attachments: available (or in-use if multiattach) -create-> reserved -update->
  attaching -os-complete-> in-use; delete leaves the most advanced state of the
  remaining attachments (attached > attaching > detaching > reserved), else available.

Not emulated: creating, listing, extending or deleting volumes; snapshots; a backend
(no target exists; every volume is LVM/iSCSI with the one CHAP secret); policies and
roles (any token is a member of every project, any service token has the service
role); Nova (asked by Cinder before deleting a connected attachment); readonly
metadata; migrations; pagination and sorting of attachment lists.
"""
import copy
import datetime
from typing import Any
from typing import NamedTuple
from typing import Optional
import uuid

NEW_ATTACH, ATTACH_COMPLETE, ATTACH_MODE = (3, 27), (3, 44), (3, 54)
DEFAULT_TYPE_ID = 'f8a1d0e2-0000-4000-8000-000000000001'  # __DEFAULT__
FAULT_NAMES = {400: 'badRequest', 403: 'forbidden', 404: 'itemNotFound', 405: 'badMethod',
               409: 'conflictingRequest', 413: 'overLimit', 415: 'badMediaType',
               501: 'notImplemented', 503: 'serviceUnavailable'}  # others: computeFault
MESSAGES = {401: 'The request you have made requires authentication.',
            404: 'The resource could not be found.', 503: 'The service is unavailable.'}
GENERIC_500 = ('The server has either erred or is incapable of performing the requested '
               'operation.')
NOVA_CONFLICT = 'Detach volume from instance %s using the Compute API'
NO_INITIATOR = "Invalid input received: Connector doesn't have required information: initiator"


class CinderError(Exception):
    def __init__(self, status: int, message: Optional[str] = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message or MESSAGES.get(status, GENERIC_500)

    def doc(self) -> dict:
        if self.status == 401:  # keystonemiddleware, not Cinder, answers this one
            return {'error': {'code': 401, 'title': 'Unauthorized', 'message': self.message}}
        name = FAULT_NAMES.get(self.status, 'computeFault')
        return {name: {'code': self.status, 'message': self.message}}


def _bad(message: str) -> CinderError:
    return CinderError(400, message)


def _invalid(field: str, value: Any, reason: str) -> CinderError:
    """A JSON-schema failure, worded as Cinder's validator words it."""
    return _bad('Invalid input for field/attribute %s. Value: %s. %s' % (field, value, reason))


def _fields(field: str, value: Any, allowed: tuple) -> dict:
    """``value`` must be an object with no keys but ``allowed``."""
    if not isinstance(value, dict):
        raise _invalid(field, value, "%r is not of type 'object'" % (value,))
    extra = sorted(set(value) - set(allowed))
    if extra:
        raise _invalid(field, value, 'Additional properties are not allowed (%s was '
                       'unexpected)' % ', '.join(repr(k) for k in extra))
    return value


def _uuid(field: str, value: Any, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    try:
        uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):
        raise _invalid(field, value, "%r is not a 'uuid'" % (value,)) from None


def _mode(value: Any) -> None:
    if value not in ('rw', 'ro'):
        raise _invalid('mode', value, "%r is not one of ['rw', 'ro']" % (value,))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%f')


class Req(NamedTuple):
    version: tuple  # (3, 44)
    project: Optional[str]  # from /v3/{project_id}/..., None without
    body: Any
    headers: Any  # case-insensitive
    query: dict  # parse_qs()


class BlockStorage:
    """Volumes and attachments; ``FakeCinder`` serves them over HTTP."""

    url = ''

    def __init__(self, require_service_token: bool, chap_username: str,
                 chap_password: str, lock: Any) -> None:
        self.require_service_token = require_service_token
        self.chap_username, self.chap_password = chap_username, chap_password
        self._lock = lock
        self._volumes: dict = {}
        self._attachments: dict = {}  # in creation order

    # --- for tests ---------------------------------------------------------------------
    def add_volume(self, status: str = 'available', multiattach: bool = False,
                   az: str = 'nova', project_id: Optional[str] = None, *, size: int = 1,
                   name: Optional[str] = None, volume_id: Optional[str] = None,
                   shared_targets: bool = True) -> str:
        """A volume with no attachments; ``project_id=None`` shows it in every project."""
        vid = volume_id or str(uuid.uuid4())
        with self._lock:
            self._volumes[vid] = {
                'id': vid, 'status': status, 'attach_status': 'detached',
                'multiattach': multiattach, 'availability_zone': az,
                'project_id': project_id, 'size': size, 'name': name or 'vol-' + vid[:8],
                'shared_targets': shared_targets, 'service_uuid': str(uuid.uuid4()),
                'created_at': '2024-01-01T00:00:00.000000'}
        return vid

    def volume(self, volume_id: str) -> dict:
        """The stored state, with ``attach_status`` and every attachment record."""
        with self._lock:
            vol = copy.deepcopy(self._volumes[volume_id])
            vol['attachments'] = copy.deepcopy(self._attachments_of(volume_id))
        return vol

    def attachment(self, attachment_id: str) -> dict:
        with self._lock:
            return copy.deepcopy(self._attachments[attachment_id])

    # --- state helpers -------------------------------------------------------------------
    def _attachments_of(self, volume_id: str) -> list:
        return [a for a in self._attachments.values() if a['volume_id'] == volume_id]

    def _visible(self, vol: dict, project: Optional[str]) -> bool:
        return not project or vol['project_id'] in (None, project)

    def _find_volume(self, volume_id: str, project: Optional[str]) -> dict:
        vol = self._volumes.get(volume_id)
        if vol is None or not self._visible(vol, project):
            raise CinderError(404, 'Volume %s could not be found.' % volume_id)
        return vol

    def _find_attachment(self, attachment_id: str, project: Optional[str]) -> dict:
        att = self._attachments.get(attachment_id)
        if att is None or not self._visible(self._volumes[att['volume_id']], project):
            raise CinderError(404, 'Volume attachment could not be found with filter: '
                                   'attachment_id = %s.' % attachment_id)
        return att

    def _target(self, vol: dict, access_mode: str) -> dict:
        """What an LVM/iSCSI driver puts in ``connection_info['data']``."""
        return {'target_discovered': False,
                'target_iqn': 'iqn.2010-10.org.openstack:volume-%s' % vol['id'],
                'target_portal': '127.0.0.1:3260', 'target_lun': 1, 'volume_id': vol['id'],
                'auth_method': 'CHAP', 'auth_username': self.chap_username,
                'auth_password': self.chap_password, 'qos_specs': None,
                'access_mode': access_mode, 'encrypted': False, 'cacheable': False}

    def _new_attachment(self, vol: dict, instance_uuid: Optional[str], status: str,
                        **fields: Any) -> dict:
        att = {'id': str(uuid.uuid4()), 'volume_id': vol['id'], 'instance_uuid': instance_uuid,
               'attach_status': status, 'attach_mode': 'null', 'connector': None,
               'connection_info': None, 'attached_host': None, 'mountpoint': None,
               'attach_time': None, 'detach_time': None}
        att.update(fields)
        self._attachments[att['id']] = att
        return att

    def _check_deletion_allowed(self, req: Req, vol: dict, att: Optional[dict],
                                attachment_id: Optional[str] = None) -> None:
        """Bug #2004555: only a service may cut an attachment Nova may still use.

        Cinder asks Nova; without Nova here, an attachment with an instance and
        connection info counts as in use (409). Legacy calls name no attachment: the
        volume's only one is checked, several are refused.
        """
        if not self.require_service_token or req.headers.get('X-Service-Token'):
            return
        if att is None and attachment_id is None:
            attached = self._attachments_of(vol['id'])
            if not attached:
                return
            att = attached[0] if len(attached) == 1 else None
        if att is not None and not (att['instance_uuid'] and att['connection_info']):
            return
        raise CinderError(409, NOVA_CONFLICT % (att['instance_uuid'] if att else ''))

    def _finish_detach(self, vol: dict, att: dict) -> None:
        del self._attachments[att['id']]
        left = {a['attach_status'] for a in self._attachments_of(vol['id'])}
        for state in ('attached', 'attaching', 'detaching', 'reserved'):
            if state in left:
                vol.update(status='in-use' if state == 'attached' else state,
                           attach_status=state)
                return
        vol.update(status='available', attach_status='detached')

    def _volume_view(self, vol: dict, req: Req) -> dict:
        project = vol['project_id'] or req.project
        view = {
            'id': vol['id'], 'status': vol['status'], 'size': vol['size'],
            'availability_zone': vol['availability_zone'], 'name': vol['name'],
            'description': None, 'created_at': vol['created_at'], 'updated_at': None,
            'volume_type': '__DEFAULT__', 'snapshot_id': None, 'source_volid': None,
            'metadata': {}, 'user_id': None, 'bootable': 'false', 'encrypted': False,
            'replication_status': None, 'consistencygroup_id': None,
            'multiattach': vol['multiattach'], 'os-vol-tenant-attr:tenant_id': project,
            'links': [{'rel': 'self',
                       'href': '%s/v3/%s/volumes/%s' % (self.url, project, vol['id'])}],
            # Only 'attached' attachments are listed, and their 'id' is the volume's.
            'attachments': [{'server_id': a['instance_uuid'], 'attachment_id': a['id'],
                             'attached_at': a['attach_time'], 'host_name': a['attached_host'],
                             'volume_id': vol['id'], 'device': a['mountpoint'],
                             'id': vol['id']}
                            for a in self._attachments_of(vol['id'])
                            if a['attach_status'] == 'attached']}
        for since, extra in (((3, 13), {'group_id': None}), ((3, 21), {'provider_id': None}),
                             ((3, 48), {'shared_targets': vol['shared_targets'],
                                        'service_uuid': vol['service_uuid']}),
                             ((3, 63), {'volume_type_id': DEFAULT_TYPE_ID}),
                             ((3, 65), {'consumes_quota': True})):
            if req.version >= since:
                view.update(extra)
        return view

    @staticmethod
    def _attachment_view(att: dict, detail: bool = True) -> dict:
        view = {'id': att['id'], 'status': att['attach_status'],
                'instance': att['instance_uuid'], 'volume_id': att['volume_id']}
        if detail:
            view.update(attached_at=att['attach_time'] or '', detached_at='',
                        attach_mode=att['attach_mode'], connection_info=att['connection_info'])
        return view

    # --- /volumes ----------------------------------------------------------------------
    def _show_volume(self, req: Req, id: str) -> tuple:
        return 200, {'volume': self._volume_view(self._find_volume(id, req.project), req)}

    def _volume_action(self, req: Req, id: str) -> tuple:
        if not isinstance(req.body, dict) or len(req.body) != 1:
            raise _bad('Malformed request body')
        (name, arg), = req.body.items()
        if name not in VOLUME_ACTIONS:
            raise _bad('There is no such action: %s' % name)
        return VOLUME_ACTIONS[name](self, req, self._find_volume(id, req.project), arg)

    def _reserve(self, req: Req, vol: dict, arg: Any) -> tuple:
        allowed = ('available', 'in-use') if vol['multiattach'] else ('available',)
        if vol['status'] not in allowed:
            raise _bad('Invalid volume: Volume status must be %s to reserve, but the status '
                       'is %s.' % (' or '.join(allowed), vol['status']))
        vol['status'] = 'attaching'
        return 202, None

    def _unreserve(self, req: Req, vol: dict, arg: Any) -> tuple:
        if vol['status'] == 'attaching':  # else nothing to do: still 202
            vol['status'] = 'in-use' if self._attachments_of(vol['id']) else 'available'
        return 202, None

    def _initialize_connection(self, req: Req, vol: dict, arg: Any) -> tuple:
        connector = _fields('os-initialize_connection', arg, ('connector',)).get('connector')
        if not isinstance(connector, dict) or 'initiator' not in connector:
            raise _bad(NO_INITIATOR)
        return 200, {'connection_info': {'driver_volume_type': 'iscsi',
                                         'data': self._target(vol, 'rw')}}

    def _terminate_connection(self, req: Req, vol: dict, arg: Any) -> tuple:
        if 'connector' not in _fields('os-terminate_connection', arg, ('connector',)):
            raise _invalid('os-terminate_connection', arg, "'connector' is a required property")
        self._check_deletion_allowed(req, vol, None)
        return self._unreserve(req, vol, None)

    def _attach(self, req: Req, vol: dict, arg: Any) -> tuple:
        arg = _fields('os-attach', arg, ('instance_uuid', 'mountpoint', 'host_name', 'mode'))
        instance, host = arg.get('instance_uuid'), arg.get('host_name')
        if not isinstance(arg.get('mountpoint'), str) or not arg['mountpoint']:
            raise _invalid('mountpoint', arg.get('mountpoint'), 'a non-empty string expected')
        _uuid('instance_uuid', instance, nullable=True)
        _mode(arg.get('mode', 'rw'))
        if instance is None and host is None:
            raise _bad('Invalid request to attach volume to an invalid target')
        if instance and host:
            raise _bad('Invalid request to attach volume to an instance %s and a host %s '
                       'simultaneously' % (instance, host))
        if vol['status'] == 'in-use' and not vol['multiattach']:
            raise _bad('Error attaching volume - InvalidVolume: Invalid volume: volume is '
                       'already attached')
        self._new_attachment(vol, instance, 'attached', attach_mode=arg.get('mode', 'rw'),
                             attached_host=host, mountpoint=arg['mountpoint'],
                             attach_time=_now())
        vol.update(status='in-use', attach_status='attached')
        return 202, None

    def _begin_detaching(self, req: Req, vol: dict, arg: Any) -> tuple:
        if vol['status'] != 'in-use' or vol['attach_status'] != 'attached':
            raise _bad("Invalid volume: Unable to detach volume. Volume status must be "
                       "'in-use' and attach_status must be 'attached' to detach.")
        vol['status'] = 'detaching'
        return 202, None

    def _roll_detaching(self, req: Req, vol: dict, arg: Any) -> tuple:
        if vol['status'] == 'detaching':
            vol['status'] = 'in-use'
        return 202, None

    def _detach(self, req: Req, vol: dict, arg: Any) -> tuple:
        attachment_id = _fields('os-detach', arg or {}, ('attachment_id',)).get('attachment_id')
        _uuid('attachment_id', attachment_id, nullable=True)
        found = self._attachments.get(attachment_id) if attachment_id else None
        self._check_deletion_allowed(req, vol, found, attachment_id)
        attached = self._attachments_of(vol['id'])
        if attachment_id and (found is None or found['volume_id'] != vol['id']):
            raise _bad('Error detaching volume - VolumeAttachmentNotFound: Volume attachment '
                       'could not be found with filter: attachment_id = %s.' % attachment_id)
        if not attachment_id and len(attached) > 1:
            raise _bad('Error detaching volume - InvalidVolume: Invalid volume: Detach volume '
                       'failed: More than one attachment, but no attachment_id provided.')
        if found or attached:
            self._finish_detach(vol, found or attached[0])
        else:  # "Volume detach called, but volume not attached"
            vol.update(status='available', attach_status='detached')
        return 202, None

    # --- /attachments --------------------------------------------------------------------
    def _list_attachments(self, req: Req) -> tuple:
        wanted = {'instance' if key == 'instance_id' else key: req.query[key][0]
                  for key in ('volume_id', 'instance_id', 'status') if key in req.query}
        views = [self._attachment_view(a) for a in self._attachments.values()
                 if self._visible(self._volumes[a['volume_id']], req.project)]
        return 200, {'attachments': [v for v in views
                                     if all(v[k] == val for k, val in wanted.items())]}

    def _create_attachment(self, req: Req) -> tuple:
        keys = ('instance_uuid', 'connector', 'volume_uuid')
        keys += ('mode',) if req.version >= ATTACH_MODE else ()
        arg = _fields('attachment', _fields('body', req.body, ('attachment',)).get(
            'attachment'), keys)
        _uuid('volume_uuid', arg.get('volume_uuid'))
        _uuid('instance_uuid', arg.get('instance_uuid'))
        _mode(arg.get('mode', 'rw'))
        vol = self._find_volume(arg['volume_uuid'], req.project)
        instance = arg['instance_uuid']
        if 'error' in vol['status']:
            raise _bad('Invalid volume: Volume attachments can not be created if the volume is '
                       'in an error state. The Volume %s currently has a status of: %s '
                       % (vol['id'], vol['status']))
        allowed = (('available', 'in-use', 'downloading') if vol['multiattach']
                   else ('available', 'downloading'))
        if vol['status'] in allowed:
            vol['status'] = 'reserved'
        elif not (vol['status'] in ('in-use', 'reserved') and any(
                a['instance_uuid'] == instance for a in self._attachments_of(vol['id']))):
            # (the same instance may reserve again: Nova does so to migrate)
            raise _bad('Invalid volume: Volume %s status must be %s to reserve, but the '
                       'current status is %s.' % (vol['id'], ' or '.join(allowed),
                                                  vol['status']))
        att = self._new_attachment(vol, instance, 'reserved', connection_info={},
                                   attach_mode=arg.get('mode', 'null'))
        if arg.get('connector'):  # a failure here leaves the reservation in place
            self._connect(vol, att, arg['connector'],
                          'Unable to create attachment for volume (%s).')
        return 200, {'attachment': self._attachment_view(att)}

    def _show_attachment(self, req: Req, id: str) -> tuple:
        return 200, {'attachment': self._attachment_view(self._find_attachment(id, req.project))}

    def _update_attachment(self, req: Req, id: str) -> tuple:
        arg = _fields('attachment', _fields('body', req.body, ('attachment',)).get(
            'attachment'), ('connector',))
        if not isinstance(arg.get('connector'), dict) or not arg['connector']:
            raise _invalid('connector', arg.get('connector'), 'a non-empty object expected')
        att = self._find_attachment(id, req.project)
        vol = self._volumes[att['volume_id']]
        if 'error' in vol['status']:
            raise CinderError(500, 'Unable to update attachment.(Invalid volume: Volume '
                                   'attachments can not be updated if the volume is in an '
                                   'error state.).')
        self._connect(vol, att, arg['connector'], 'Unable to update attachment.(%s).')
        return 200, {'attachment': self._attachment_view(att)}

    def _connect(self, vol: dict, att: dict, connector: Any, failure: str) -> None:
        """The volume service's attachment_update: export, store flat connection_info."""
        if not isinstance(connector, dict) or 'initiator' not in connector:
            raise CinderError(500, failure % NO_INITIATOR)  # a remote error in this flow
        mode = (att['attach_mode'] if att['attach_mode'] in ('rw', 'ro')
                else connector.get('mode') or 'rw')
        info = dict(self._target(vol, mode), driver_volume_type='iscsi',
                    attachment_id=att['id'])
        att.update(connector=copy.deepcopy(connector), connection_info=info,
                   attach_status='attaching', attach_mode=mode, attach_time=_now(),
                   attached_host=connector.get('host'),
                   mountpoint=connector.get('mountpoint', 'na'))
        vol.update(status='attaching', attach_status='attaching')

    def _attachment_action(self, req: Req, id: str) -> tuple:
        if not isinstance(req.body, dict) or len(req.body) != 1:
            raise _bad('Malformed request body')
        if 'os-complete' not in req.body:
            raise _bad('There is no such action: %s' % next(iter(req.body)))
        if req.version < ATTACH_COMPLETE:  # VersionNotFoundForAPIMethod
            raise CinderError(404)
        att = self._find_attachment(id, req.project)
        att['attach_status'] = 'attached'
        self._volumes[att['volume_id']].update(status='in-use', attach_status='attached')
        return 204, None

    def _delete_attachment(self, req: Req, id: str) -> tuple:
        att = self._find_attachment(id, req.project)
        vol = self._volumes[att['volume_id']]
        self._check_deletion_allowed(req, vol, att)
        self._finish_detach(vol, att)
        return 200, {'attachments': [self._attachment_view(a, detail=False)
                                     for a in self._attachments_of(vol['id'])]}


VOLUME_ACTIONS = {
    'os-reserve': BlockStorage._reserve, 'os-unreserve': BlockStorage._unreserve,
    'os-initialize_connection': BlockStorage._initialize_connection,
    'os-terminate_connection': BlockStorage._terminate_connection,
    'os-attach': BlockStorage._attach, 'os-detach': BlockStorage._detach,
    'os-begin_detaching': BlockStorage._begin_detaching,
    'os-roll_detaching': BlockStorage._roll_detaching,
}
# (method, path without /v3[/{project_id}], handler, lowest microversion): first match wins.
ROUTES = [
    ('GET', r'/volumes/(?P<id>[^/]+)', BlockStorage._show_volume, None),
    ('POST', r'/volumes/(?P<id>[^/]+)/action', BlockStorage._volume_action, None),
    ('GET', r'/attachments(?:/detail)?', BlockStorage._list_attachments, NEW_ATTACH),
    ('POST', r'/attachments', BlockStorage._create_attachment, NEW_ATTACH),
    ('GET', r'/attachments/(?P<id>[^/]+)', BlockStorage._show_attachment, NEW_ATTACH),
    ('PUT', r'/attachments/(?P<id>[^/]+)', BlockStorage._update_attachment, NEW_ATTACH),
    ('DELETE', r'/attachments/(?P<id>[^/]+)', BlockStorage._delete_attachment, NEW_ATTACH),
    ('POST', r'/attachments/(?P<id>[^/]+)/action', BlockStorage._attachment_action,
     NEW_ATTACH),
]

"""Fixtures for unit tests: a private ConfigOpts, requests-mock'ed Cinder, fake:// RPC."""
import logging
import os
import sys
import uuid

from oslo_config import cfg
import oslo_messaging as messaging
from oslo_messaging.notify import _impl_test as notify_test
import pytest
import requests_mock

from attachworker import conf as aw_conf
from attachworker import connector
from attachworker import context as aw_context
from attachworker import rpc
from attachworker import virt
from attachworker.cinder import CinderAPI
from attachworker.manager import ComputeManager
from attachworker.notifications import Notifier
from attachworker.worker.journal import Journal
from attachworker.worker.outbox import Outbox

CINDER = 'http://cinder.test:8776'
PROJECT = '4c2a8f3e9b1d4e6f8a0b1c2d3e4f5a6b'
CHAP_SECRET = 'chap-Secr3t-never-logged'
TOKEN = 'gAAAAA-caller-token-never-logged'


@pytest.fixture
def conf(tmp_path):
    c = cfg.ConfigOpts()
    aw_conf.register_opts(c)
    rpc.set_defaults(c)
    c([], project='attachworker-test')
    root = tmp_path / 'host'
    (root / 'etc' / 'iscsi').mkdir(parents=True)
    (root / 'etc' / 'iscsi' / 'initiatorname.iscsi').write_text(
        'InitiatorName=iqn.2004-10.org.attachworker:unit\n')
    c.set_override('host', 'compute-unit')
    c.set_override('state_path', str(tmp_path / 'state'))
    c.set_override('host_root', str(root), group='connector')
    c.set_override('endpoint_template', CINDER + '/v3/%(project_id)s', group='cinder')
    c.set_override('http_retries', 1, group='cinder')
    os.makedirs(c.state_path, exist_ok=True)
    return c


@pytest.fixture
def ctxt():
    return aw_context.RequestContext(auth_token=TOKEN, user_id='u1', project_id=PROJECT,
                                     roles=['member'])


class CinderMock:
    """requests-mock'ed Cinder: one volume, the calls both flows make, a request log."""

    def __init__(self, mocker, max_version='3.71', project=PROJECT):
        self.m = mocker
        self.volume_id = str(uuid.uuid4())
        self.attachment_id = str(uuid.uuid4())
        self.volume = {'id': self.volume_id, 'status': 'available', 'attach_status': 'detached',
                       'multiattach': False, 'availability_zone': 'nova', 'attachments': []}
        self.connection_info = {'driver_volume_type': 'iscsi', 'data': {
            'target_iqn': 'iqn.2010-10.org.openstack:volume-x', 'target_portal': '127.0.0.1:3260',
            'target_lun': 1, 'auth_method': 'CHAP', 'auth_username': 'chapuser',
            'auth_password': CHAP_SECRET, 'access_mode': 'rw'}}
        base = '%s/v3/%s' % (CINDER, project)
        self.base = base
        mocker.get(CINDER + '/', json={'versions': [{
            'id': 'v3.0', 'status': 'CURRENT', 'version': max_version, 'min_version': '3.0',
            'links': [{'href': CINDER + '/v3/', 'rel': 'self'}]}]})
        mocker.get('%s/volumes/%s' % (base, self.volume_id), json=self._volume)
        att = '%s/attachments/%s' % (base, self.attachment_id)
        #: the attachment as Cinder holds it: instance and status follow the calls
        self.att = {'instance': None, 'status': 'reserved'}
        mocker.post('%s/attachments' % base, json=self._created)
        mocker.get(att, json=self._shown)
        self.listed = []  # what GET /attachments?volume_id= answers
        mocker.get('%s/attachments' % base, json=lambda r, c: {'attachments': self.listed})
        mocker.put(att, json=self._updated)
        mocker.post(att + '/action', json=self._completed)
        mocker.delete(att, json=self._deleted)
        mocker.post('%s/volumes/%s/action' % (base, self.volume_id), json=self._action)

    def _volume(self, request, context):
        return {'volume': self.volume}

    def _created(self, request, context):
        self.att.update(instance=request.json()['attachment'].get('instance_uuid'),
                        status='reserved', deleted=False)
        return {'attachment': self._attachment()}

    def _shown(self, request, context):
        if self.att.get('deleted'):
            context.status_code = 404
            return {'itemNotFound': {'message': 'gone', 'code': 404}}
        return {'attachment': self._attachment()}

    def _deleted(self, request, context):
        self.att['deleted'] = True
        if self.volume['status'] in ('reserved', 'attaching'):  # as Cinder: free again
            self.volume['status'] = 'available'
        return {}

    def _completed(self, request, context):
        self.att['status'] = 'attached'
        context.status_code = 204
        return None

    def reserve_for(self, instance_uuid):
        """The controller reserved the attachment for the instance."""
        self.att['instance'] = instance_uuid
        self.volume['status'] = 'reserved'

    def _updated(self, request, context):
        # Cinder's attachments API answers connection_info flat, not nested in 'data'
        flat = dict(self.connection_info['data'], attachment_id=self.attachment_id,
                    driver_volume_type=self.connection_info['driver_volume_type'])
        self.att['status'] = 'attaching'
        return {'attachment': dict(self._attachment(), connection_info=flat)}

    def _attachment(self):
        return {'id': self.attachment_id, 'volume_id': self.volume_id,
                'status': self.att['status'], 'instance': self.att['instance'],
                'attach_mode': 'rw', 'connection_info': {}}

    def _action(self, request, context):
        body = request.json()
        if 'os-initialize_connection' in body:
            return {'connection_info': self.connection_info}
        if 'os-attach' in body:  # as Cinder does: the volume now shows the attachment
            self.volume.update(status='in-use', attachments=[{
                'server_id': body['os-attach']['instance_uuid'],
                'attachment_id': self.attachment_id,
                'device': body['os-attach']['mountpoint']}])
        context.status_code = 202
        return {}

    def fail(self, method, suffix, status=500, action=None):
        """Make ``method`` on the URL ending in ``suffix`` (and JSON action) fail."""
        def matcher(request):
            if request.method != method or not request.path.endswith(suffix.lower()):
                return False
            return action is None or action in (request.json() or {})
        self.m.register_uri(method, requests_mock.ANY, additional_matcher=matcher,
                            status_code=status,
                            json={'badRequest' if status < 500 else 'computeFault':
                                  {'message': 'injected %d' % status, 'code': status}})

    def calls(self):
        """The Cinder calls made, version discovery left out: ('POST', 'os-reserve')."""
        out = []
        for r in self.m.request_history:
            if r.path == '/' or not r.url.startswith(CINDER):
                continue
            path = '/' + r.path.split('/v3/', 1)[-1].split('/', 1)[-1]
            path = path.replace(self.volume_id, 'VOL').replace(self.attachment_id, 'ATT')
            if r.query and path == '/attachments':
                path += '?' + [q for q in r.query.split('&') if q.startswith('volume_id')][0]
                path = path.replace(self.volume_id.lower(), 'VOL')
            body = r.json() if r.body else None
            if path.endswith('/action') and body:
                path += ':' + next(iter(body))
            out.append('%s %s' % (r.method, path))
        return out


@pytest.fixture
def cinder_mock():
    with requests_mock.Mocker() as m:
        yield CinderMock(m)


@pytest.fixture
def notifications():
    """A function returning [(event_type, priority, payload data, message)] so far."""
    notify_test.reset()

    def published():
        return [(msg['event_type'], priority, msg['payload']['attachworker_object.data'], msg)
                for _ctxt, msg, priority, _retry in notify_test.NOTIFICATIONS]
    yield published
    notify_test.reset()


@pytest.fixture
def journal(conf):
    j = Journal(conf.state_path)
    yield j
    j.close()


@pytest.fixture
def make_manager(conf, notifications, journal):
    def make(**overrides):
        transport = messaging.get_notification_transport(conf, url='fake://')
        notifier = Notifier(transport, conf.host, driver='test')
        parts = dict(cinder_api=CinderAPI(conf), virt_driver=virt.load_driver(conf),
                     outbox=Outbox(journal, notifier),
                     connector=lambda: connector.get_connector_properties(conf))
        parts.update(overrides)
        return ComputeManager(conf, **parts)
    return make


@pytest.fixture
def restore_logging():
    """parse_args reconfigures the root logger: put it back afterwards."""
    root = logging.getLogger()
    handlers, level, hook = root.handlers[:], root.level, sys.excepthook
    levels = {name: lg.level for name, lg in logging.Logger.manager.loggerDict.items()
              if isinstance(lg, logging.Logger)}
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
    sys.excepthook = hook
    for name, lg in logging.Logger.manager.loggerDict.items():
        if isinstance(lg, logging.Logger):
            lg.setLevel(levels.get(name, logging.NOTSET))


# --- RPC over fake:// ------------------------------------------------------------------
# The RPC client reads option groups registered only on the global cfg.CONF (DESIGN.md's
# known trap), so these use cfg.CONF and reset it afterwards.
@pytest.fixture
def global_conf(conf):
    g = cfg.CONF
    aw_conf.register_opts(g)
    rpc.set_defaults(g)
    g([], project='attachworker-test')
    yield g
    g.reset()
    g.clear_override('compute', group='upgrade_levels')


@pytest.fixture
def server(global_conf, make_manager):
    transport = messaging.get_rpc_transport(global_conf, url='fake:///')
    manager = make_manager()
    srv = rpc.get_rpc_server(transport, 'compute-unit', manager, manager.reject)
    srv.start()
    yield transport, manager
    srv.stop()
    srv.wait()
    transport.cleanup()

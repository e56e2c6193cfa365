"""Integration fixtures: the real Keystone + Cinder of tools/local-cloud.

Nothing here is a stand-in: tokens come from Keystone, volumes from Cinder, and
every test judges the outcome by what Cinder reports afterwards. The cloud must be
up (tools/run-tests brings it up); a missing cloud fails the tests, it never skips
them.
"""
import inspect
import os
import pathlib
import subprocess
import time
import uuid

from cinderclient import client as cinder_client
from keystoneauth1 import loading as ks_loading
from keystoneauth1 import service_token
from keystoneauth1 import session as ks_session
import pytest

from attachworker import context as aw_context
from tests.harness import Worker
from tests.harness import read_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLOUD_HOME = pathlib.Path(os.environ.get('ATTACHWORKER_CLOUD_HOME',
                                         '/var/tmp/attachworker-cloud'))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if 'tests/integration' in str(item.fspath):
            item.add_marker(pytest.mark.integration)
    _run_taken_over_tests_once(config, items)


def _run_taken_over_tests_once(config, items):
    """A test another module takes over (a function there wraps it, functools.wraps:
    test_tempest_volume_attach.py) runs once, under the name of the module that took it
    over; run on its own, its own module still runs it."""
    taken = {inspect.unwrap(item.function) for item in items
             if isinstance(item, pytest.Function)
             and inspect.unwrap(item.function) is not item.function}
    dropped = [item for item in items
               if isinstance(item, pytest.Function) and item.function in taken]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]


def _env_file(path):
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith('#') and '=' in line:
            key, value = line.split('=', 1)
            values[key.replace('export ', '').strip()] = value.split('   #')[0].strip()
    return values


@pytest.fixture(scope='session')
def cloud():
    status = subprocess.run([str(ROOT / 'tools' / 'local-cloud'), 'status'],
                            capture_output=True, text=True)
    if status.returncode != 0:
        pytest.fail('the local cloud is not up (tools/local-cloud up):\n' + status.stdout)
    values = _env_file(CLOUD_HOME / 'cloud.env')
    values.update(_env_file(CLOUD_HOME / 'secrets.env'))
    return values


def session_for(cloud, user, password_key, project):
    auth = ks_loading.get_plugin_loader('password').load_from_options(
        auth_url=cloud['OS_AUTH_URL'], username=user, password=cloud[password_key],
        project_name=project, user_domain_id='default', project_domain_id='default')
    return ks_session.Session(auth=auth)


@pytest.fixture(scope='session')
def sessions(cloud):
    return {'demo': session_for(cloud, 'demo', 'DEMO_PASSWORD', 'demo'),
            'alt_demo': session_for(cloud, 'alt_demo', 'ALT_DEMO_PASSWORD', 'alt_demo'),
            'admin': session_for(cloud, 'admin', 'ADMIN_PASSWORD', 'admin')}


def cinder_for(session, version='3.44'):
    return cinder_client.Client(version, session=session, region_name='RegionOne')


@pytest.fixture(scope='session')
def admin_cinder(cloud, sessions):
    """Admin with a service token: may read everything and clean anything up."""
    nova = session_for(cloud, 'nova', 'NOVA_PASSWORD', 'service')
    wrapped = ks_session.Session(auth=service_token.ServiceTokenAuthWrapper(
        user_auth=sessions['admin'].auth, service_auth=nova.auth))
    return cinder_for(wrapped)


def caller_context(session):
    """What attachworker-cast puts in a context: the caller's token, ids and catalog."""
    access = session.auth.get_access(session)
    return aw_context.RequestContext(
        auth_token=access.auth_token, user_id=access.user_id, project_id=access.project_id,
        roles=access.role_names, service_catalog=access.service_catalog.catalog)


#: Made by tools/cloud/cloudctl.py multiattach-types, each only where its backend can hold
#: multiattach volumes: fake first (no Ceph needed), then the RBD backend of
#: tools/storage-stack.
MULTIATTACH_TYPES = ('multiattach', 'multiattach-ceph')


class Volumes:
    """Creates volumes as a user; deletes every one of them at the end (as admin)."""

    def __init__(self, sessions, admin):
        self._sessions = sessions
        self._admin = admin
        self.created = []

    def create(self, user='demo', multiattach=False, volume_type=None):
        """``multiattach``: of the multiattach type Cinder can place now
        (``multiattach_type``), unless ``volume_type`` names one."""
        c = cinder_for(self._sessions[user])
        if multiattach and volume_type is None:
            volume_type = self.multiattach_type()
        volume = c.volumes.create(1, name='it-%s' % uuid.uuid4().hex[:6],
                                  volume_type=volume_type)
        self.created.append(volume.id)
        return volume.id

    def multiattach_type(self):
        """The first of MULTIATTACH_TYPES that exists and whose backend's pool reports
        the multiattach capability (Cinder's scheduler places nothing elsewhere)."""
        types = {t.name: t.get_keys() for t in self._admin.volume_types.list(is_public=None)}
        pools = {p.name.rsplit('#', 1)[-1]: p._info.get('capabilities', {})
                 for p in self._admin.pools.list(detailed=True)}
        for name in MULTIATTACH_TYPES:
            backend = types.get(name, {}).get('volume_backend_name')
            if pools.get(backend, {}).get('multiattach') is True:
                return name
        pytest.fail('no multiattach volume type Cinder can place (types %s, pools %s): '
                    'tools/local-cloud up creates them (tools/cloud/cloudctl.py '
                    'multiattach-types); multiattach-ceph needs tools/storage-stack up'
                    % (sorted(types), {b: c.get('multiattach') for b, c in pools.items()}))

    def wait_available(self, ids, timeout=120):
        deadline = time.monotonic() + timeout
        pending = set(ids)
        while pending:
            for vid in list(pending):
                status = self._admin.volumes.get(vid).status
                if status == 'available':
                    pending.discard(vid)
                elif status == 'error' or time.monotonic() > deadline:
                    raise AssertionError('volume %s is %s' % (vid, status))
            if pending:
                time.sleep(0.3)

    def make(self, count=1, user='demo', multiattach=False, volume_type=None):
        ids = [self.create(user, multiattach, volume_type) for _ in range(count)]
        self.wait_available(ids)
        return ids

    def cleanup(self):
        for vid in self.created:
            try:
                volume = self._admin.volumes.get(vid)
                for att in volume.attachments:
                    self._admin.attachments.delete(att['attachment_id'])
                for att in self._admin.attachments.list(search_opts={'volume_id': vid,
                                                                     'all_tenants': 1}):
                    self._admin.attachments.delete(att.id)
                self._admin.volumes.reset_state(vid, 'available', attach_status='detached')
                self._admin.volumes.delete(vid)
            except Exception as exc:  # noqa: BLE001 - best-effort cleanup
                print('cleanup of volume %s: %s' % (vid, exc))


@pytest.fixture
def volumes(sessions, admin_cinder):
    vols = Volumes(sessions, admin_cinder)
    yield vols
    vols.cleanup()


@pytest.fixture
def make_worker(tmp_path, cloud):
    """A worker configured like tools/local-cloud's, with its own host and exchange."""
    workers = []

    def make(**options):
        sections = read_config(CLOUD_HOME / 'attachworker.conf')
        sections.setdefault('DEFAULT', {})['debug'] = 'true'
        worker = Worker(tmp_path / ('w%d' % len(workers)), sections, **options)
        workers.append(worker)
        return worker.start()
    yield make
    for worker in workers:
        worker.stop()


def cinder_db(cloud, sql, *params):
    """Read Cinder's own database (what Cinder stored, where its API does not show it)."""
    import psycopg2
    with psycopg2.connect(host='127.0.0.1', port=int(cloud.get('PG_PORT', 5433)),
                          user='cinder', password=cloud['DB_PASSWORD'],
                          dbname='cinder') as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()

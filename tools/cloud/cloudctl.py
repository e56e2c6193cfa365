"""Keystone/Cinder chores of tools/local-cloud that are easier in Python.

Runs with the cloud's own venv (it imports keystoneclient and cinderclient from there,
never from the project's .venv). Passwords and URLs come from the environment that
tools/local-cloud exports: OS_AUTH_URL, CINDER_URL, ADMIN_PASSWORD, CINDER_PASSWORD,
DEMO_PASSWORD, ALT_DEMO_PASSWORD, NOVA_PASSWORD.

    cloudctl.py setup-keystone IDS_FILE   # users/projects/roles/catalog; IDs -> IDS_FILE
    cloudctl.py wait-services SECONDS     # until cinder-scheduler and cinder-volume are up
    cloudctl.py check-services            # one look; exit 0 when both are up
    cloudctl.py pin-default-type BACKEND  # __DEFAULT__ gets volume_backend_name=BACKEND
    cloudctl.py multiattach-types         # the multiattach volume types Cinder can place
"""
import os
import sys
import time

from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3

AUTH_URL = os.environ.get('OS_AUTH_URL', 'http://127.0.0.1:5000/v3')
REGION = 'RegionOne'


def admin_session():
    auth = v3.Password(auth_url=AUTH_URL, username='admin',
                       password=os.environ['ADMIN_PASSWORD'], project_name='admin',
                       user_domain_id='default', project_domain_id='default')
    return ks_session.Session(auth=auth, timeout=30)


# ----------------------------------------------------------------- keystone setup
def _find(manager, name, **kw):
    return next((x for x in manager.list(**kw) if x.name == name), None)


def _project(ks, name, domain):
    return _find(ks.projects, name, domain=domain) or ks.projects.create(
        name=name, domain=domain, description='attachworker local cloud: %s' % name)


def _user(ks, name, password, domain, project):
    user = _find(ks.users, name, domain=domain)
    if user is None:
        return ks.users.create(name=name, password=password, domain=domain,
                               default_project=project)
    # a re-run with new passwords must win over an old one
    return ks.users.update(user, password=password, default_project=project)


def _role(ks, name):
    return _find(ks.roles, name) or ks.roles.create(name=name)


def setup_keystone(ids_file):
    from keystoneclient.v3 import client as ks_client

    ks = ks_client.Client(session=admin_session(), interface='public')
    domain = ks.domains.get('default')
    roles = {n: _role(ks, n) for n in ('admin', 'member', 'reader', 'service')}
    projects = {n: _project(ks, n, domain) for n in ('service', 'demo', 'alt_demo')}
    projects['admin'] = _find(ks.projects, 'admin', domain=domain)

    # (user, password variable, project, roles in that project)
    wanted = [
        # keystonemiddleware inside cinder-api validates tokens as this user
        ('cinder', 'CINDER_PASSWORD', 'service', ('admin', 'service')),
        ('demo', 'DEMO_PASSWORD', 'demo', ('member',)),
        # a second tenant, so tests can check that demo's volumes are refused to it
        ('alt_demo', 'ALT_DEMO_PASSWORD', 'alt_demo', ('member',)),
        # the worker's identity: 'service' makes its X-Service-Token count (Cinder lets a
        # service delete attachments that have connection_info, OSSA-2023-003); 'admin'
        # lets its [cinder] auth touch other projects' volumes during recovery/reconcile
        ('nova', 'NOVA_PASSWORD', 'service', ('service', 'admin')),
    ]
    users = {}
    for name, pw_var, project, role_names in wanted:
        users[name] = _user(ks, name, os.environ[pw_var], domain, projects[project])
        for r in role_names:
            ks.roles.grant(roles[r], user=users[name], project=projects[project])

    # catalog entry the worker finds through catalog_info = volumev3::publicURL
    cinder_url = os.environ.get('CINDER_URL', 'http://127.0.0.1:8776') + '/v3/%(project_id)s'
    svc = next(iter(ks.services.list(type='volumev3')), None) or ks.services.create(
        name='cinderv3', type='volumev3', description='Cinder Volume Service V3')
    have = {e.interface: e for e in ks.endpoints.list(service=svc)}
    for iface in ('public', 'internal', 'admin'):
        if iface not in have:
            ks.endpoints.create(service=svc, url=cinder_url, interface=iface, region=REGION)
        elif have[iface].url != cinder_url:
            ks.endpoints.update(have[iface], url=cinder_url)

    lines = ['%s_PROJECT_ID=%s' % (n.upper(), p.id) for n, p in sorted(projects.items())]
    lines += ['%s_USER_ID=%s' % (n.upper(), u.id) for n, u in sorted(users.items())]
    tmp = ids_file + '.tmp'
    with open(tmp, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    os.replace(tmp, ids_file)
    print('[local-cloud]   keystone: projects service/demo/alt_demo, users cinder/demo/'
          'alt_demo/nova, volumev3 endpoint %s' % cinder_url)


# ----------------------------------------------------------------- cinder services
def _cinder_services():
    from cinderclient import client as cinder_client
    c = cinder_client.Client('3.0', session=admin_session(), region_name=REGION)
    return {(s.binary, s.host): s.state for s in c.services.list()}


def _both_up(states):
    up = {binary for (binary, _host), state in states.items() if state == 'up'}
    return {'cinder-scheduler', 'cinder-volume'} <= up


def wait_services(seconds):
    deadline = time.monotonic() + float(seconds)
    states = {}
    while time.monotonic() < deadline:
        try:
            states = _cinder_services()
            if _both_up(states):
                return 0
        except Exception as e:  # noqa: BLE001 - cinder-api may still be starting
            states = {'error': str(e)[:200]}
        time.sleep(0.5)
    print('[local-cloud] cinder services never all reported up: %s' % states, file=sys.stderr)
    return 1


def check_services():
    try:
        states = _cinder_services()
    except Exception as e:  # noqa: BLE001
        print('cinder service list failed: %s' % str(e)[:200])
        return 1
    print(' '.join('%s@%s=%s' % (b, h, s) for (b, h), s in sorted(states.items())))
    return 0 if _both_up(states) else 1


def pin_default_type(backend):
    """Untyped volumes (type __DEFAULT__) go to BACKEND only. With a second backend (the
    ceph one of tools/storage-stack) the capacity weigher would pick it: Cinder's fake
    driver reports 'infinite' capacity, which that weigher ranks last."""
    from cinderclient import client as cinder_client
    c = cinder_client.Client('3.0', session=admin_session(), region_name=REGION)
    vtype = next(t for t in c.volume_types.list(is_public=None) if t.name == '__DEFAULT__')
    if vtype.get_keys().get('volume_backend_name') != backend:
        vtype.set_keys({'volume_backend_name': backend})
    return 0


#: Public multiattach volume types and their backend. A volume type with the extra spec
#: multiattach="<is> True" makes Cinder create multiattach volumes; its scheduler
#: (CapabilitiesFilter) places them only on a pool that reports the capability.
MULTIATTACH_TYPES = (('multiattach', 'fake'), ('multiattach-ceph', 'ceph'))
MULTIATTACH_SPEC = '<is> True'
#: Why a backend without its pool reported yet still gets its type.
REPORTS_MULTIATTACH_ALWAYS = {
    'ceph': "Cinder's RBD driver always reports multiattach (tools/storage-stack adds it)"}
FAKE_HOWTO = ("FakeLoggingVolumeDriver reports no multiattach capability; Cinder's own "
              'option extra_capabilities = {"multiattach": true} in [fake] of cinder.conf '
              'would add it (cinder-volume reads it at start)')


def _pools(c, seconds):
    """{backend: capabilities} the scheduler reports, once the fake pool is among them
    (cinder-volume publishes its pools just after it starts), or after SECONDS."""
    deadline = time.monotonic() + seconds
    while True:
        pools = {p.name.rsplit('#', 1)[-1]: p._info.get('capabilities', {})
                 for p in c.pools.list(detailed=True)}
        if 'fake' in pools or time.monotonic() > deadline:
            return pools
        time.sleep(1)


def multiattach_types(seconds=60):
    """Idempotent: each type of MULTIATTACH_TYPES whose backend can hold multiattach
    volumes exists, public, with volume_backend_name and multiattach="<is> True"."""
    from cinderclient import client as cinder_client
    c = cinder_client.Client('3.0', session=admin_session(), region_name=REGION)
    pools = _pools(c, seconds)
    types = {t.name: t for t in c.volume_types.list(is_public=None)}
    for name, backend in MULTIATTACH_TYPES:
        caps = pools.get(backend)
        if caps is not None and caps.get('multiattach') is not True:
            why = FAKE_HOWTO if backend == 'fake' else 'its pool reports no multiattach'
            print('[local-cloud]   no volume type %s: backend %s cannot hold multiattach '
                  'volumes (%s)%s' % (name, backend, why,
                                      '; the existing type is left' if name in types else ''))
            continue
        if caps is None and backend not in REPORTS_MULTIATTACH_ALWAYS:
            print('[local-cloud]   no volume type %s: Cinder has no %s pool' % (name, backend))
            continue
        want = {'volume_backend_name': backend, 'multiattach': MULTIATTACH_SPEC}
        vtype = types.get(name) or c.volume_types.create(
            name, description='multiattach volumes on backend %s' % backend, is_public=True)
        if {k: vtype.get_keys().get(k) for k in want} != want:
            vtype.set_keys(want)
            print('[local-cloud]   volume type %s: %s%s' % (
                name, want, '' if caps else ' (%s)' % REPORTS_MULTIATTACH_ALWAYS[backend]))
    return 0


def main(argv):
    if len(argv) >= 2 and argv[0] == 'setup-keystone':
        return setup_keystone(argv[1])
    if len(argv) >= 2 and argv[0] == 'wait-services':
        return wait_services(argv[1])
    if argv[:1] == ['check-services']:
        return check_services()
    if len(argv) >= 2 and argv[0] == 'pin-default-type':
        return pin_default_type(argv[1])
    if argv[:1] == ['multiattach-types']:
        return multiattach_types()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]) or 0)

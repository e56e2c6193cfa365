"""Check, against the real local Cinder, that the worker's own identity can do its job.

The worker calls Cinder with the caller's token when it has one, and with its ``[cinder]``
auth (user nova, project service) when it has none: recovery at start-up and reconcile
must then unreserve/delete attachments of volumes that belong to *other* projects.
``[service_user]`` (nova again) adds an X-Service-Token to every call.

Run through ``tools/local-cloud verify`` (which exports cloud.env), with the cloud venv.
Every line says what was tried and what Cinder answered; the exit code is 0 only when
every REQUIRED result matched. Lines marked "info" only document Cinder's behaviour.
"""
import os
import sys
import time
import uuid

from cinderclient import client as cinder_client
from keystoneauth1 import service_token
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3

AUTH_URL = os.environ['OS_AUTH_URL']
CINDER_URL = os.environ['CINDER_URL']
DEMO_PROJECT_ID = os.environ['DEMO_PROJECT_ID']
MV = '3.44'   # the first microversion with attachments create/update/complete/delete
CONNECTOR = {  # os-brick shape; the fake driver refuses a connector without 'initiator'
    'platform': 'x86_64', 'os_type': 'linux', 'ip': '127.0.0.1', 'host': 'local-compute',
    'initiator': 'iqn.2004-10.org.attachworker:local-compute', 'multipath': False,
    'enforce_multipath': False, 'do_local_attach': False,
}
failures = []


def password(user, project, pw):
    return v3.Password(auth_url=AUTH_URL, username=user, password=pw, project_name=project,
                       user_domain_id='default', project_domain_id='default')


def nova_auth():
    return password('nova', 'service', os.environ['NOVA_PASSWORD'])


def client(auth, with_service_token=False, endpoint_override=None):
    if with_service_token:
        auth = service_token.ServiceTokenAuthWrapper(user_auth=auth, service_auth=nova_auth())
    sess = ks_session.Session(auth=auth, timeout=60)
    return cinder_client.Client(MV, session=sess, region_name='RegionOne',
                                endpoint_override=endpoint_override)


def attempt(label, fn, *args, expect='ok', **kw):
    """Run one call; expect 'ok', an HTTP status (int) or None (info only)."""
    t0 = time.perf_counter()
    try:
        result, outcome = fn(*args, **kw), 'ok'
    except Exception as e:  # noqa: BLE001 - the outcome is what we report
        result = None
        code = getattr(e, 'code', None) or getattr(e, 'http_status', None)
        outcome = code if isinstance(code, int) else type(e).__name__
        detail = str(e).splitlines()[0][:110]
    ms = (time.perf_counter() - t0) * 1000
    if expect is None:
        mark = 'info'
    elif outcome == expect:
        mark = 'PASS'
    else:
        mark = 'FAIL'
        failures.append(label)
    shown = 'ok' if outcome == 'ok' else 'HTTP %s: %s' % (outcome, detail)
    print('  %-4s %-62s -> %s (%.0f ms)' % (mark, label, shown, ms), flush=True)
    return result, outcome


def wait_status(c, vol_id, wanted, timeout=60):
    deadline = time.time() + timeout
    while True:
        status = c.volumes.get(vol_id).status
        if status in wanted:
            return status
        if status == 'error' or time.time() > deadline:
            raise RuntimeError('volume %s is %s, wanted %s' % (vol_id, status, wanted))
        time.sleep(0.2)


def attachment_cycle(c, vol_id, who, delete_expect='ok'):
    """create -> update(connector) -> complete -> delete, as the worker's attach + undo do."""
    att, out = attempt('%s: attachments.create' % who, c.attachments.create,
                       vol_id, None, str(uuid.uuid4()))
    if out != 'ok':
        return None
    attempt('%s: attachments.update(connector with initiator)' % who,
            c.attachments.update, att['id'], CONNECTOR)
    attempt('%s: attachments.complete' % who, c.attachments.complete, att['id'])
    _, out = attempt('%s: attachments.delete (has connection_info)' % who,
                     c.attachments.delete, att['id'], expect=delete_expect)
    return None if out == 'ok' else att['id']


def legacy_cycle(c, vol_id, who, undo_expect='ok'):
    """reserve -> initialize_connection -> attach, then the undo: terminate -> detach."""
    attempt('%s: legacy reserve' % who, c.volumes.reserve, vol_id)
    attempt('%s: legacy initialize_connection' % who, c.volumes.initialize_connection,
            vol_id, CONNECTOR)
    attempt('%s: legacy attach' % who, c.volumes.attach, vol_id, str(uuid.uuid4()), '/dev/vdb')
    vol = c.volumes.get(vol_id)
    att_id = vol.attachments[0]['attachment_id'] if vol.attachments else None
    attempt('%s: legacy terminate_connection' % who, c.volumes.terminate_connection,
            vol_id, CONNECTOR, expect=undo_expect)
    _, out = attempt('%s: legacy detach' % who, c.volumes.detach, vol_id, att_id,
                     expect=undo_expect)
    if att_id and out != 'ok':
        # leave the volume clean for the next checks
        attempt('%s: clean up with nova+svc (detach)' % who,
                client(nova_auth(), True).volumes.detach, vol_id, att_id, expect=None)


def main():
    demo = client(password('demo', 'demo', os.environ['DEMO_PASSWORD']))
    demo_svc = client(password('demo', 'demo', os.environ['DEMO_PASSWORD']), True)
    alt = client(password('alt_demo', 'alt_demo', os.environ['ALT_DEMO_PASSWORD']))
    nova = client(nova_auth())                       # URL .../v3/<service project>
    nova_svc = client(nova_auth(), True)
    demo_url = '%s/v3/%s' % (CINDER_URL, DEMO_PROJECT_ID)
    nova_demo_url = client(nova_auth(), endpoint_override=demo_url)

    print('== a demo-project volume')
    vol = demo.volumes.create(1, name='verify-%s' % uuid.uuid4().hex[:6])
    wait_status(demo, vol.id, {'available'})
    print('  volume %s in project demo is available' % vol.id)
    try:
        print('== cross-project refusal (alt_demo must not see demo\'s volume)')
        attempt('alt_demo: volumes.get', alt.volumes.get, vol.id, expect=404)
        attempt('alt_demo: attachments.create', alt.attachments.create,
                vol.id, None, str(uuid.uuid4()), expect=404)

        print('== nova@service token alone (the [cinder] auth: recovery, reconcile)')
        attempt('nova: volumes.get (catalog URL = service project)', nova.volumes.get, vol.id)
        # Cinder refuses a URL whose project differs from the token's ("Malformed request
        # url"): with no caller token, %(project_id)s must be nova's project, not the volume's
        attempt('nova: volumes.get (URL with the demo project id)', nova_demo_url.volumes.get,
                vol.id, expect=400)
        attempt('nova: volumes.reserve', nova.volumes.reserve, vol.id)
        attempt('nova: volumes.unreserve', nova.volumes.unreserve, vol.id)
        wait_status(demo, vol.id, {'available'})
        # without X-Service-Token Cinder asks Nova whether the attachment is still used;
        # there is no Nova here, so this is expected to fail (500; 409 with a real Nova)
        left = attachment_cycle(nova, vol.id, 'nova', delete_expect=None)
        if left:
            attempt('nova+X-Service-Token: delete what nova alone could not',
                    nova_svc.attachments.delete, left)
        wait_status(demo, vol.id, {'available'})
        att, _ = attempt('nova: attachments.create (reserved, no connector)',
                         nova.attachments.create, vol.id, None, str(uuid.uuid4()))
        if att:
            attempt('nova: attachments.delete of a reserved attachment',
                    nova.attachments.delete, att['id'])

        print('== nova@service token + X-Service-Token (what the worker sends)')
        wait_status(demo, vol.id, {'available'})
        attempt('nova+svc: volumes.get', nova_svc.volumes.get, vol.id)
        attempt('nova+svc: volumes.reserve', nova_svc.volumes.reserve, vol.id)
        attempt('nova+svc: volumes.unreserve', nova_svc.volumes.unreserve, vol.id)
        wait_status(demo, vol.id, {'available'})
        attachment_cycle(nova_svc, vol.id, 'nova+svc')
        wait_status(demo, vol.id, {'available'})
        legacy_cycle(nova_svc, vol.id, 'nova+svc')

        print('== legacy flow with the nova token alone')
        wait_status(demo, vol.id, {'available'})
        legacy_cycle(nova, vol.id, 'nova', undo_expect=None)

        print('== caller token (demo) + X-Service-Token (the normal attach/detach path)')
        wait_status(demo, vol.id, {'available'})
        attachment_cycle(demo_svc, vol.id, 'demo+svc')
        wait_status(demo, vol.id, {'available'})
        left = attachment_cycle(demo, vol.id, 'demo alone', delete_expect=None)
        if left:
            attempt('nova+svc: delete what demo alone could not', nova_svc.attachments.delete, left)

        print('== the fake driver insists on an iSCSI initiator in the connector')
        wait_status(demo, vol.id, {'available'})
        att, _ = attempt('demo+svc: attachments.create', demo_svc.attachments.create,
                         vol.id, None, str(uuid.uuid4()))
        if att:
            no_initiator = {k: v for k, v in CONNECTOR.items() if k != 'initiator'}
            attempt('demo+svc: attachments.update(connector without initiator)',
                    demo_svc.attachments.update, att['id'], no_initiator, expect=None)
            attempt('demo+svc: attachments.delete', demo_svc.attachments.delete, att['id'])

        print('== why nova needs admin: a user with only the service role')
        probe_role_only(vol.id)
    finally:
        try:
            wait_status(demo, vol.id, {'available'}, timeout=30)
            demo.volumes.delete(vol.id)
            print('== deleted volume %s' % vol.id)
        except Exception as e:  # noqa: BLE001
            print('== could not delete volume %s: %s' % (vol.id, e))

    if failures:
        print('VERIFY FAILED: %s' % ', '.join(failures))
        return 1
    print('VERIFY OK: nova@service (admin + service) can do what recovery and reconcile need')
    return 0


def probe_role_only(vol_id):
    """A throw-away user with role 'service' only, to show what 'admin' adds."""
    from keystoneclient.v3 import client as ks_client
    admin = ks_session.Session(auth=password('admin', 'admin', os.environ['ADMIN_PASSWORD']))
    ks = ks_client.Client(session=admin, interface='public')
    project = ks.projects.list(name='service')[0]
    role = [r for r in ks.roles.list() if r.name == 'service'][0]
    pw = uuid.uuid4().hex
    user = ks.users.create(name='verify-svc-only-%s' % pw[:6], password=pw,
                           domain='default', default_project=project)
    try:
        ks.roles.grant(role, user=user, project=project)
        c = client(password(user.name, 'service', pw))
        attempt('service-role-only: volumes.get', c.volumes.get, vol_id, expect=None)
        attempt('service-role-only: volumes.reserve', c.volumes.reserve, vol_id, expect=None)
    finally:
        ks.users.delete(user)


if __name__ == '__main__':
    sys.exit(main())

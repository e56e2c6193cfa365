"""Keystone unreachable just when the worker needs its service token.

With ``[service_user] send_service_user_token = true`` the worker gets a service
token from Keystone before its first Cinder call. A worker started fresh holds no
cached token, so with Keystone stopped the cast must end ``.error`` at step
``cinder_client`` (IdentityUnavailable) before anything reaches Cinder. The
caller's token and catalog were obtained before Keystone stopped, as a controller
would have. Judged by Cinder once Keystone is back: the volume is ``available``
with no attachment; and the same worker then attaches it, so nothing was left
broken inside the worker either.
"""
import subprocess
import time
import urllib.error
import urllib.request
import uuid

from tests.integration.conftest import CLOUD_HOME
from tests.integration.conftest import ROOT
from tests.integration.conftest import caller_context

LOCAL_CLOUD = str(ROOT / 'tools' / 'local-cloud')
KEYSTONE = 'http://127.0.0.1:5000/v3'
CINDER_API_LOG = CLOUD_HOME / 'logs' / 'cinder-api.log'


def keystone_answers(timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(KEYSTONE, timeout=5) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    return False


def start_keystone() -> None:
    """``start-service keystone``, and wait until Keystone answers.

    start-service may report that gunicorn "exited at once" although it is starting:
    it looks for gunicorn's process title 0.2 s after the launch, before gunicorn has
    set it. So Keystone answering is what counts; start it again only if it does not.
    """
    outputs = []
    for _ in range(3):
        done = subprocess.run([LOCAL_CLOUD, 'start-service', 'keystone'],
                              capture_output=True, text=True)
        outputs.append(done.stdout + done.stderr)
        if keystone_answers(60):
            return
    raise AssertionError('keystone did not come back:\n' + '\n'.join(outputs))


def cast(ctl, worker, ctxt, volume_id, timeout=60):
    ctl.api.attach_volume(ctxt, worker.host, {'uuid': str(uuid.uuid4()),
                                              'project_id': ctxt.project_id},
                          volume_id, '/dev/vdb')
    events = ctl.outcomes([ctxt.request_id], timeout).get(ctxt.request_id, [])
    return [e for e in events if e.endswith(('.end', '.error'))]


def test_keystone_down_when_the_service_token_is_needed_reserves_nothing(
        make_worker, controller, volumes, sessions, admin_cinder):
    worker = make_worker(service_user__send_service_user_token='true')
    ctl = controller(worker)
    (vid,) = volumes.make()
    ctxt = caller_context(sessions['demo'])  # the caller's token, before Keystone stops
    t0 = time.monotonic()
    try:
        subprocess.run([LOCAL_CLOUD, 'stop-service', 'keystone'], check=True,
                       capture_output=True)
        stopped = time.monotonic()
        terminal = cast(ctl, worker, ctxt, vid)
        answered = time.monotonic() - stopped
    finally:
        start_keystone()
    down = time.monotonic() - t0
    fault = ctl.fault(ctxt.request_id)
    print('Keystone down: 1 cast, outcome %s in %.1f s, fault %s at %s; keystone down '
          'for %.1f s' % (terminal, answered, fault and fault['exception'],
                          fault and fault['step'], down))
    assert terminal == ['instance.volume_attach.error'], worker.logs()[-3000:]
    assert (fault['step'], fault['exception'], fault['code']) == (
        'cinder_client', 'IdentityUnavailable', 503)
    assert '[service_user] auth' in fault['message']
    # cinder-api logs the global request id of every request: it never saw this cast
    assert ctxt.request_id not in CINDER_API_LOG.read_text()

    volume = admin_cinder.volumes.get(vid)
    assert volume.status == 'available' and volume.attachments == []
    assert list(admin_cinder.attachments.list(search_opts={'volume_id': vid,
                                                            'all_tenants': 1})) == []
    # Keystone is back: the same worker gets its token and attaches
    retry = caller_context(sessions['demo'])
    assert cast(ctl, worker, retry, vid) == ['instance.volume_attach.end'], \
        ctl.notes(retry.request_id)
    assert admin_cinder.volumes.get(vid).status == 'in-use'
    assert retry.request_id in CINDER_API_LOG.read_text()  # the log check above can see

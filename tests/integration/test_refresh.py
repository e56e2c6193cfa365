"""``attachworker-manage volume_attachment refresh`` against the real Keystone + Cinder
(fake virt driver: its instances are stopped), judged by what Cinder reports.

The attachment the worker made is replaced by a new one made with this host's
connector; Cinder shows exactly one attachment of the volume to the instance, the
new one, ``attached``; the old one is gone; the host's record names the new one;
the refresh is notified like a cast. Refusals (a connector of another host, a volume
not attached) change nothing and exit with nova-manage's codes.
"""
import json
import re
import subprocess
import uuid

from cinderclient import exceptions as cinder_exc
import pytest

from tests.harness import BIN
from tests.integration.conftest import caller_context


def manage(worker, *args):
    return subprocess.run([str(BIN / 'attachworker-manage'), '--config-file',
                           str(worker.config), 'volume_attachment', *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def attached(make_worker, controller, volumes, sessions, admin_cinder):
    worker = make_worker()
    ctl = controller(worker)
    [vid] = volumes.make(1)
    instance = str(uuid.uuid4())
    ctxt = caller_context(sessions['demo'])
    ctl.api.attach_volume(ctxt, worker.host, {'uuid': instance,
                                              'project_id': ctxt.project_id}, vid, None)
    seen = ctl.outcomes([ctxt.request_id])
    assert seen[ctxt.request_id][-1] == 'instance.volume_attach.end', worker.logs()[-3000:]
    [old] = admin_cinder.volumes.get(vid).attachments
    return worker, ctl, vid, instance, old['attachment_id']


def test_refresh_replaces_the_attachment_with_one_made_with_todays_connector(
        attached, admin_cinder, tmp_path):
    worker, ctl, vid, instance, old = attached
    done = manage(worker, 'refresh', instance, vid)
    assert done.returncode == 0, done.stdout + done.stderr
    volume = admin_cinder.volumes.get(vid)
    assert volume.status == 'in-use'
    [now] = [a for a in volume.attachments if a['server_id'] == instance]
    new = now['attachment_id']
    assert new != old and len(volume.attachments) == 1
    shown = admin_cinder.attachments.show(new)
    assert (shown.status, shown.instance) == ('attached', instance)
    assert shown.connection_info['driver_volume_type']  # made with a connector
    with pytest.raises(cinder_exc.NotFound):
        admin_cinder.attachments.show(old)
    # this host and Cinder agree, on the new attachment
    show = manage(worker, 'show', instance, vid)
    assert show.returncode == 0 and 'consistent' in show.stdout, show.stdout
    assert new in show.stdout and old not in show.stdout
    # notified like a cast, with both attachments
    request_id = re.search(r'request (req-[0-9a-f-]+)', done.stdout).group(1)
    seen = ctl.outcomes([request_id])
    assert seen[request_id] == ['instance.volume_refresh.start',
                                'instance.volume_refresh.end'], seen
    [end] = [n for n in ctl.notes(request_id) if n['event_type'].endswith('.end')]
    data = end['payload']['attachworker_object.data']
    assert (data['attachment_id'], data['old_attachment_id']) == (new, old)
    # and again: a refresh is repeatable
    again = manage(worker, 'refresh', instance, vid)
    assert again.returncode == 0, again.stdout + again.stderr
    [after] = admin_cinder.volumes.get(vid).attachments
    assert after['attachment_id'] not in (old, new)


def test_a_refused_refresh_changes_nothing_in_cinder(attached, admin_cinder, volumes,
                                                     tmp_path):
    worker, ctl, vid, instance, old = attached
    connector = manage(worker, 'get_connector')
    assert connector.returncode == 0, connector.stderr
    props = json.loads(connector.stdout)
    elsewhere = tmp_path / 'elsewhere.json'
    elsewhere.write_text(json.dumps(dict(props, host='compute-elsewhere')))
    refused = manage(worker, 'refresh', instance, vid, '--connector', str(elsewhere))
    assert refused.returncode == 7, refused.stdout + refused.stderr
    assert 'compute-elsewhere' in refused.stderr
    missing = manage(worker, 'refresh', instance, vid, '--connector',
                     str(tmp_path / 'none.json'))
    assert missing.returncode == 2, missing.stderr
    [other] = volumes.make(1)
    not_attached = manage(worker, 'refresh', instance, other)
    assert not_attached.returncode == 6, not_attached.stdout + not_attached.stderr
    assert 'not attached' in not_attached.stderr
    assert admin_cinder.volumes.get(other).status == 'available'
    assert [a['attachment_id'] for a in admin_cinder.volumes.get(vid).attachments] == [old]
    assert admin_cinder.attachments.show(old).status == 'attached'
    # the operator's own connector file of this host is used
    mine = tmp_path / 'mine.json'
    mine.write_text(connector.stdout)
    done = manage(worker, 'refresh', instance, vid, '--connector', str(mine))
    assert done.returncode == 0, done.stdout + done.stderr

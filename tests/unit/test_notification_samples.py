"""Published notifications match the samples kept in the repo.

The samples (attachworker/notifications/samples/) are the contract consumers code
against. Only ``request_id`` and ``duration_ms`` vary from run to run; everything
else, including key order-insensitive structure, must be identical. Set
ATTACHWORKER_REGENERATE_SAMPLES=1 to rewrite them after an intended change.
"""
import json
import os
import pathlib

from attachworker import context as aw_context
from attachworker.notifications import payload as payload_mod
from tests.unit.conftest import PROJECT

SAMPLES = pathlib.Path(payload_mod.__file__).parent / 'samples'
INSTANCE = {'uuid': '8f0e3c4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b', 'project_id': PROJECT,
            'user_id': 'd13b5e7a9c1f4b3d8e2a6c4b0f9d7e5a'}
VARIABLE = ('request_id', 'duration_ms')


def normalise(message):
    note = {k: message[k] for k in ('event_type', 'priority', 'publisher_id', 'payload')}
    data = note['payload']['attachworker_object.data']
    for key in VARIABLE:
        if data.get(key) is not None:
            data[key] = '<%s>' % key
    return note


def check(name, message):
    path = SAMPLES / ('%s.json' % name)
    actual = normalise(message)
    if os.environ.get('ATTACHWORKER_REGENERATE_SAMPLES'):
        path.write_text(json.dumps(actual, indent=4, sort_keys=True) + '\n')
    assert actual == json.loads(path.read_text()), 'stale sample %s' % path


def test_attach_start_and_end_match_samples(make_manager, cinder_mock, notifications):
    ctxt = aw_context.RequestContext(auth_token='t', project_id=PROJECT,
                                     user_id=INSTANCE['user_id'])
    make_manager().attach_volume(ctxt, INSTANCE, cinder_mock.volume_id, '/dev/vdb')
    (_, _, _, start), (_, _, _, end) = notifications()
    _fix(start, cinder_mock)
    _fix(end, cinder_mock)
    check('instance-volume_attach-start', start)
    check('instance-volume_attach-end', end)


def test_attach_error_matches_sample(make_manager, cinder_mock, notifications):
    ctxt = aw_context.RequestContext(auth_token='t', project_id=PROJECT,
                                     user_id=INSTANCE['user_id'])
    cinder_mock.fail('PUT', '/attachments/' + cinder_mock.attachment_id, 503)
    make_manager().attach_volume(ctxt, INSTANCE, cinder_mock.volume_id, '/dev/vdb')
    error = notifications()[-1][3]
    _fix(error, cinder_mock)
    check('instance-volume_attach-error', error)


def _fix(message, cinder_mock):
    """Random ids of the mocked Cinder become the samples' fixed ones."""
    data = message['payload']['attachworker_object.data']
    data['volume_id'] = 'b1207c3e-2f4d-4a5b-9c6d-7e8f9a0b1c2d'
    if data.get('attachment_id'):
        data['attachment_id'] = '5d77a1b2-c3d4-4e5f-8a9b-0c1d2e3f4a5b'
    fault = data.get('fault')
    if fault:
        fault['message'] = fault['message'].replace(cinder_mock.volume_id, '<volume_id>')


def test_detach_start_and_end_match_samples(make_manager, cinder_mock, notifications, conf):
    ctxt = aw_context.RequestContext(auth_token='t', project_id=PROJECT,
                                     user_id=INSTANCE['user_id'])
    cinder_mock.volume.update(status='in-use', attachments=[{
        'server_id': INSTANCE['uuid'], 'attachment_id': cinder_mock.attachment_id,
        'device': '/dev/vdb'}])
    make_manager().detach_volume(ctxt, INSTANCE, cinder_mock.volume_id)
    (_, _, _, start), (_, _, _, end) = notifications()
    _fix(start, cinder_mock)
    _fix(end, cinder_mock)
    check('instance-volume_detach-start', start)
    check('instance-volume_detach-end', end)


def _extend_ready(conf, cinder_mock, size):
    from tests.unit.test_extend import mark_attached
    mark_attached(conf, cinder_mock, instance=INSTANCE, size=size)


def test_extend_start_and_end_match_samples(make_manager, cinder_mock, notifications, conf):
    ctxt = aw_context.RequestContext(auth_token='t', project_id=PROJECT,
                                     user_id=INSTANCE['user_id'])
    _extend_ready(conf, cinder_mock, 1)
    make_manager().extend_volume(ctxt, INSTANCE, cinder_mock.volume_id, new_size=1)
    cinder_mock.volume['size'] = 2  # extended again: the host knows the size it had
    make_manager().extend_volume(ctxt, INSTANCE, cinder_mock.volume_id, new_size=2)
    (_, _, _, start), (_, _, _, end) = notifications()[-2:]
    _fix(start, cinder_mock)
    _fix(end, cinder_mock)
    assert (end['payload']['attachworker_object.data']['old_size'],
            end['payload']['attachworker_object.data']['new_size']) == (1, 2)
    check('instance-volume_extend-start', start)
    check('instance-volume_extend-end', end)


def test_extend_error_matches_sample(make_manager, cinder_mock, notifications, conf):
    ctxt = aw_context.RequestContext(auth_token='t', project_id=PROJECT,
                                     user_id=INSTANCE['user_id'])
    _extend_ready(conf, cinder_mock, 2)
    cinder_mock.fail('GET', '/volumes/' + cinder_mock.volume_id, 503)
    make_manager().extend_volume(ctxt, INSTANCE, cinder_mock.volume_id, new_size=2)
    error = notifications()[-1][3]
    _fix(error, cinder_mock)
    check('instance-volume_extend-error', error)

"""Nothing secret is stored: the whole database dump is scanned for the secrets.

Upstream bugs put a token or password where none belongs: in the payload, in the
context, in a fault message, in a message we reject.
"""
import json
import uuid

import pytest

from attachworker.audit import models
from attachworker.audit import testing
from tests.functional.audit.harness import wait_until

pytestmark = pytest.mark.functional

SECRETS = {
    'payload_token': 'tok-PAYLOAD-%s' % uuid.uuid4().hex,
    'chap': 'chap-SECRET-%s' % uuid.uuid4().hex,
    'fernet': 'gAAAAAB' + uuid.uuid4().hex + uuid.uuid4().hex,
    'context_token': 'tok-CONTEXT-%s' % uuid.uuid4().hex,
    'header': 'hdr-%s' % uuid.uuid4().hex,
    'password': 'pw-%s' % uuid.uuid4().hex,
    'raw': 'raw-PASSWORD-%s' % uuid.uuid4().hex,
}


@pytest.mark.slow
def test_secrets_are_masked_everywhere(broker, backend, make_serve):
    serve = make_serve().start()
    publisher = broker.publisher()
    # (an id with "secret" in it would itself be masked, as oslo.utils does)
    request_id = 'req-%s' % uuid.uuid4()
    start = testing.payload('attach', 'start', request_id=request_id,
                            auth_token=SECRETS['payload_token'],
                            connection_info={'driver_volume_type': 'iscsi', 'data': {
                                'auth_method': 'CHAP', 'auth_password': SECRETS['chap']}})
    publisher.send(testing.message('attach', 'start', start), ctxt={
        'request_id': request_id, 'auth_token': SECRETS['context_token'],
        'X-Auth-Token': SECRETS['fernet'], 'user_id': 'u', 'project_id': 'p'})
    error = testing.payload('attach', 'error', request_id=request_id, fault=testing.fault(
        exception='CinderNotAuthorized', code=401,
        message='401 from Cinder; request had X-Auth-Token: %s and password=%s'
                % (SECRETS['header'], SECRETS['password'])))
    publisher.notify('attach', 'error', error)
    # rejected messages keep an excerpt: it is masked too
    bad = testing.payload('attach', 'start', version='9.0', admin_password=SECRETS['password'])
    publisher.notify('attach', 'start', bad)
    broker.publish_raw(('not json; password=%s' % SECRETS['raw']).encode())

    wait_until(lambda: backend.count(models.events) == 2
               and backend.count(models.rejected) == 2, 30, 'stored and rejected')
    assert serve.stop() == 0

    dump = backend.dump()
    assert request_id in dump and 'CinderNotAuthorized' in dump  # the dump is real
    leaked = [name for name, secret in SECRETS.items() if secret in dump]
    assert leaked == []
    [event] = [e for e in backend.rows(models.events) if e['outcome'] == 'error']
    assert event['fault_message'] == ('401 from Cinder; request had X-Auth-Token: *** and '
                                      'password=***')
    stored = json.loads([e for e in backend.rows(models.events)
                         if e['outcome'] == 'pending'][0]['payload'])
    data = stored['attachworker_object.data']
    assert data['auth_token'] == '***'
    assert data['connection_info']['data'] == {'auth_method': 'CHAP',
                                               'auth_password': '***'}


IDENTITY_SECRETS = {name: '%s-%s' % (name, uuid.uuid4().hex) for name in (
    'publisher', 'message_id', 'event_type', 'rejected_publisher', 'rejected_id',
    'unencodable', 'raw_id', 'raw_text')}


@pytest.mark.slow
def test_secrets_in_ids_event_types_and_reasons_are_masked(broker, backend, make_serve):
    """The columns that are not the payload: publisher, message id, event type, reason."""
    serve = make_serve().start()
    publisher = broker.publisher()
    s = IDENTITY_SECRETS
    stored = testing.message('attach', 'start', testing.payload('attach', 'start'))
    stored.update(publisher_id='attachworker-compute:h token=' + s['publisher'],
                  message_id='m-%s password=%s' % (uuid.uuid4().hex, s['message_id']))
    publisher.send(stored)
    foreign = testing.message('attach', 'start', testing.payload('attach', 'start'))
    foreign.update(event_type='volume.attach chap_secret=' + s['event_type'],
                   publisher_id='cinder password=' + s['rejected_publisher'],
                   message_id='m-%s auth_token=%s' % (uuid.uuid4().hex, s['rejected_id']))
    publisher.send(foreign)
    unencodable = testing.message('attach', 'start', testing.payload('attach', 'start'))
    unencodable.update(event_type='x\ud800 X-Auth-Token: ' + s['unencodable'])
    publisher.send(unencodable)
    broker.publish_raw(json.dumps({'oslo.version': '2.0', 'oslo.message': json.dumps({
        'message_id': 'm-raw password=' + s['raw_id'],
        'padding': 'x' * 2 * 1024 * 1024 + ' chap_secret=' + s['raw_text']})}).encode())

    wait_until(lambda: backend.count(models.events) == 1
               and backend.count(models.rejected) == 3, 30, 'stored and rejected')
    assert serve.stop() == 0

    dump = backend.dump()
    assert 'volume.attach chap_secret=***' in dump and 'm-raw password=***' in dump
    assert [name for name, secret in IDENTITY_SECRETS.items() if secret in dump] == []
    logs = serve.logs()
    assert 'Rejected notification' in logs  # nor in what serve logged about them
    assert [name for name, secret in IDENTITY_SECRETS.items() if secret in logs] == []
    [event] = backend.rows(models.events)
    assert event['publisher_id'] == 'attachworker-compute:h token=***'
    assert event['message_id'].endswith(' password=***')

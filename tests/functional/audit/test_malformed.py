"""Malformed and foreign messages are kept as rejected, and consumption goes on.

Raw kombu publishes reach the exchange exactly as garbage would: most of these
never get to an oslo.messaging endpoint (see attachworker/audit/listener.py).
"""
import json
import pickle
import uuid

import pytest

from attachworker.audit import models
from attachworker.audit import testing
from tests.functional.audit.harness import wait_until

pytestmark = pytest.mark.functional

MB = 1024 * 1024


def envelope(message, version='2.0'):
    inner = message if isinstance(message, str) else json.dumps(message)
    return json.dumps({'oslo.version': version, 'oslo.message': inner}).encode()


def contract_message(**changes):
    msg = testing.message('attach', 'start', testing.payload('attach', 'start'))
    msg.update(changes)
    return msg


def data_without(field):
    payload = testing.payload('attach', 'end')
    del payload['attachworker_object.data'][field]
    return testing.message('attach', 'end', payload)


def other_schema(**envelope_changes):
    payload = testing.payload('attach', 'start')
    payload.update(envelope_changes)
    return testing.message('attach', 'start', payload)


NOVA_PAYLOAD = {'nova_object.name': 'InstanceActionVolumePayload',
                'nova_object.namespace': 'nova', 'nova_object.version': '1.9',
                'nova_object.data': {'volume_id': 'v'}}

#: (name, body, content type, routing key, expected reason)
RAW = [
    ('not JSON', b'this is not json {', 'application/json', 'info',
     'body is not valid application/json'),
    ('plain text', b'hello auditor', 'text/plain', 'info',
     'body decodes to str, not a JSON object'),
    ('JSON list', b'[1, 2, 3]', 'application/json', 'info',
     'body decodes to list, not a JSON object'),
    ('pickle', pickle.dumps({'a': 1}), 'application/x-python-serialize', 'info',
     'body is not valid application/x-python-serialize'),
    ('envelope 3.0', envelope({}, version='3.0'), 'application/json', 'info',
     'UnsupportedRpcEnvelopeVersion'),
    ('broken inner JSON', envelope('{"message_id": '), 'application/json', 'info',
     'bad oslo.messaging envelope: JSONDecodeError'),
    ('no envelope, no priority', json.dumps({'message_id': str(uuid.uuid4()),
                                             'event_type': 'x'}).encode(),
     'application/json', 'info', "priority 'None' is not INFO or ERROR"),
    ('priority not a string', envelope(contract_message(priority=7)), 'application/json',
     'info', "priority '7' is not INFO or ERROR"),
    ('WARN on the info key', envelope(contract_message(priority='WARN')),
     'application/json', 'info', "priority 'WARN' is not INFO or ERROR"),
    ('missing request_id', envelope(data_without('request_id')), 'application/json',
     'info', 'payload lacks request_id'),
    ('nova payload', envelope(dict(contract_message(), payload=NOVA_PAYLOAD)),
     'application/json', 'info', 'payload is not an attachworker_object envelope'),
    ('foreign event type', envelope(contract_message(event_type='compute.instance.exists')),
     'application/json', 'info', "event type 'compute.instance.exists' is not"),
    ('schema 2.0', envelope(other_schema(**{'attachworker_object.version': '2.0'})),
     'application/json', 'info', "payload version '2.0' is not 1.x"),
    ('1 MB of garbage', b'x' * MB, 'application/json', 'info',
     'message is 1048576 bytes, more than max_message_size'),
    ('garbage on the error key', b'{oops', 'application/json', 'error',
     'body is not valid application/json'),
]


@pytest.mark.slow
def test_malformed_messages_are_rejected_with_a_reason(broker, backend, make_serve):
    serve = make_serve().start()
    publisher = broker.publisher()
    good = [testing.payload('attach', 'start') for _ in range(20)]
    for payload in good[:10]:
        publisher.notify('attach', 'start', payload)
    for _, body, content_type, priority, _ in RAW:
        broker.publish_raw(body, routing_key='versioned_notifications.' + priority,
                           content_type=content_type,
                           content_encoding='utf-8' if 'json' in content_type
                           or 'text' in content_type else 'binary')
    # A real Notifier sending a 1 MB payload: rejected, its message_id kept.
    huge = testing.payload('attach', 'start', mountpoint='/dev/vdb',
                           extra='y' * MB, request_id='req-huge-' + uuid.uuid4().hex)
    publisher.notify('attach', 'start', huge)
    for payload in good[10:]:  # consumption goes on after all of that
        publisher.notify('attach', 'start', payload)

    expected_rejected = len(RAW) + 1
    wait_until(lambda: backend.count(models.events) == len(good)
               and backend.count(models.rejected) == expected_rejected, 60,
               'every message stored or rejected')
    assert serve.stop() == 0
    counts = serve.counts()
    print('\n[%s] %d stored, %d rejected' % (backend.name, counts['stored'],
                                             counts['rejected']))
    assert counts == {'stored': len(good), 'duplicate': 0,
                      'rejected': expected_rejected, 'requeued': 0}
    assert broker.queue_depth() == (0, 0)  # nothing left to redeliver

    rejected = backend.rows(models.rejected)
    for name, _, _, _, reason in RAW:
        assert sum(reason in row['reason'] for row in rejected) >= 1, name
    [huge_row] = [r for r in rejected if r['event_type'] == 'instance.volume_attach.start'
                  and 'max_message_size' in r['reason']]
    assert huge_row['size'] > MB and len(huge_row['excerpt']) <= 2048
    assert huge_row['message_id']
    stored = {row['request_id'] for row in backend.rows(models.events)}
    assert stored == {p['attachworker_object.data']['request_id'] for p in good}

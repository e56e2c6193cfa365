"""Text no database driver can encode: rejected once, never an outage, never a loop.

JSON carries any code point as an escape, lone surrogates included ("\\ud800"), and
json.loads gives them back as such; neither psycopg2 nor sqlite3 will encode them.
Such a message is refused by the contract, kept in ``rejected`` with the text
escaped, and acknowledged; the messages around it are stored.
"""
import json
import uuid

import pytest

from attachworker.audit import models
from attachworker.audit import testing
from tests.functional.audit.harness import wait_until

pytestmark = pytest.mark.functional

BAD = 'bad-\ud800-%s'


def with_surrogate(place, mark):
    """(message, ctxt) with a lone surrogate in ``place``; ``mark`` finds its row."""
    payload = testing.payload('attach', 'start')
    data = payload['attachworker_object.data']
    msg = testing.message('attach', 'start', payload)
    ctxt = {'request_id': data['request_id'], 'user_id': 'u', 'project_id': 'p'}
    text = BAD % mark
    if place.startswith('payload.'):
        data[place.split('.')[1]] = text
    elif place.startswith('context.'):
        ctxt[place.split('.')[1]] = text
    elif place == 'payload key':
        data[text] = 1
    else:
        msg[place] = text
    return msg, ctxt


PLACES = {'payload.host': 'attachworker_object.data.host',
          'payload.extra': 'attachworker_object.data.extra',
          'payload key': 'a key of payload.attachworker_object.data',
          'event_type': 'event_type', 'publisher_id': 'publisher_id',
          'message_id': 'message_id', 'context.user_id': 'context.user_id'}


@pytest.mark.slow
def test_unencodable_text_is_rejected_and_the_rest_stored(broker, backend, make_serve):
    serve = make_serve(batch_size=16, batch_timeout=0.5).start()
    publisher = broker.publisher()
    good = [testing.payload('attach', 'start') for _ in range(len(PLACES) + 1)]
    marks = {}
    for n, place in enumerate(PLACES):  # each between two good ones, in one batch
        publisher.notify('attach', 'start', good[n])
        marks[place] = uuid.uuid4().hex[:8]
        publisher.send(*with_surrogate(place, marks[place]))
    publisher.notify('attach', 'start', good[-1])
    # a body that never reaches oslo.messaging (too big), its message_id unencodable
    broker.publish_raw(json.dumps({'oslo.version': '2.0', 'oslo.message': json.dumps(
        {'message_id': BAD % 'raw', 'padding': 'x' * 2 * 1024 * 1024})}).encode())

    wait_until(lambda: backend.count(models.events) == len(good)
               and backend.count(models.rejected) == len(PLACES) + 1, 60,
               'good stored, bad rejected')
    assert serve.stop() == 0
    assert serve.counts() == {'stored': len(good), 'duplicate': 0,
                              'rejected': len(PLACES) + 1, 'requeued': 0}
    assert broker.queue_depth() == (0, 0)
    assert 'Audit store unavailable' not in serve.logs()

    stored = {e['request_id'] for e in backend.rows(models.events)}
    assert stored == {p['attachworker_object.data']['request_id'] for p in good}
    rejected = backend.rows(models.rejected)
    for place, field in PLACES.items():
        [row] = [r for r in rejected if marks[place] in r['excerpt']
                 or marks[place] in (r['event_type'] or '') + (r['publisher_id'] or '')
                 + (r['message_id'] or '')]
        assert field + ' is not UTF-8 text: lone surrogate U+D800' in row['reason'], place
    escaped = '\\ud800'
    assert {r['event_type'] for r in rejected} >= {BAD.replace('\ud800', escaped)
                                                   % marks['event_type']}
    assert {r['message_id'] for r in rejected} >= {
        BAD.replace('\ud800', escaped) % marks['message_id'],
        BAD.replace('\ud800', escaped) % 'raw'}

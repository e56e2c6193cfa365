"""No secret reaches any column, whatever path its message took: the file is scanned.

Stored events, messages refused by the contract, text the database cannot encode,
bodies that never reached oslo.messaging, and consumer errors each write different
columns; a CHAP secret, a password or a token in any of them must be masked.
"""
import json

import oslo_messaging as messaging
import pytest

from attachworker.audit import listener
from attachworker.audit import models
from tests.unit.audit.helpers import FakeConsumer
from tests.unit.audit.helpers import FakeKombuMessage
from tests.unit.audit.helpers import count
from tests.unit.audit.helpers import notification
from tests.unit.audit.helpers import rows

HANDLED = messaging.NotificationResult.HANDLED
SECRET = 'chap-S3CRET-b5e1'


def _on_disk(db_path, engine):
    """The database file and its write-ahead log, as bytes."""
    engine.dispose()
    return {p.name: p.read_bytes() for p in db_path.parent.iterdir()
            if p.name.startswith(db_path.name)}


@pytest.fixture
def messages():
    stored = notification('attach', 'error', request_id='req-s', fault={
        'exception': 'E', 'code': 1, 'step': 'X-Auth-Token: ' + SECRET,
        'message': 'CHAP auth_password=%s' % SECRET})
    stored[1]['publisher_id'] = 'attachworker-compute:h token=' + SECRET
    stored[1]['message_id'] = 'm-1 password=' + SECRET
    stored[0]['global_request_id'] = 'req-g secret=' + SECRET
    stored[0]['auth_token'] = SECRET
    foreign = notification('attach', 'start')
    foreign[1]['event_type'] = 'volume.attach chap_secret=' + SECRET
    foreign[1]['publisher_id'] = 'cinder password=' + SECRET
    foreign[1]['message_id'] = 'm-2 token=' + SECRET
    unencodable = notification('attach', 'start')
    unencodable[1]['event_type'] = 'x\ud800 password=' + SECRET
    unencodable[1]['publisher_id'] = 'y\ud800 auth_token=' + SECRET
    return stored, foreign, unencodable


def test_no_secret_reaches_the_database_file(endpoint, engine, db_path, messages):
    stored, foreign, unencodable = messages
    assert endpoint.handle_batch([stored, foreign, unencodable]) == [HANDLED] * 3
    # a body that never reached oslo.messaging: its identity, reason and raw text
    oversized = json.dumps({'oslo.version': '2.0', 'oslo.message': json.dumps(dict(
        foreign[1], message_id='m-3 password=' + SECRET,
        padding='x' * 5000 + ' password=' + SECRET))})
    guard = listener.RawMessageGuard(FakeConsumer(), endpoint, max_size=4096)
    guard(FakeKombuMessage(oversized.encode()))
    guard(FakeKombuMessage(b'not json; password=%s' % SECRET.encode()))
    # an endpoint bug: the dispatcher keeps the message with the exception's text
    endpoint.reject("audit consumer error: KeyError: 'password=%s'" % SECRET,
                    {'message': {'chap_secret': SECRET}})
    assert (count(engine, models.events), count(engine, models.rejected)) == (1, 5)
    [event] = rows(engine, models.events)
    assert (event['message_id'], event['publisher_id']) == (
        'm-1 password=***', 'attachworker-compute:h token=***')
    rejected = {r['message_id']: r for r in rows(engine, models.rejected)}
    assert rejected['m-2 token=***']['event_type'] == 'volume.attach chap_secret=***'
    assert "'volume.attach chap_secret=***'" in rejected['m-2 token=***']['reason']

    files = _on_disk(db_path, engine)
    assert any(b'req-s' in data for data in files.values())  # the scan sees the rows
    assert [name for name, data in files.items() if SECRET.encode() in data] == []

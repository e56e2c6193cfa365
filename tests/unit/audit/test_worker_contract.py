"""The audit consumer reads what the compute worker really publishes.

Two checks that the two sides of the notification contract agree: every sample the
worker commits (attachworker/notifications/samples/) is accepted, and notifications
sent by the worker's own Notifier are stored and joined into an operation.
"""
import json
import pathlib
import time
import uuid

from oslo_config import cfg
import oslo_messaging as messaging
import pytest

from attachworker import context as aw_context
from attachworker import notifications
from attachworker import rpc
from attachworker.audit import contract
from attachworker.audit import listener
from attachworker.audit import models
from tests.unit.audit.helpers import T0
from tests.unit.audit.helpers import rows

SAMPLES = sorted((pathlib.Path(notifications.__file__).parent / 'samples').glob('*.json'))


@pytest.mark.parametrize('path', SAMPLES, ids=[p.stem for p in SAMPLES])
def test_every_committed_sample_is_accepted(path):
    sample = json.loads(path.read_text())
    data = sample['payload']['attachworker_object.data']
    data['request_id'] = 'req-sample'
    if data.get('duration_ms') is not None:
        data['duration_ms'] = 12
    message = dict(sample, message_id=str(uuid.uuid4()), timestamp=str(T0))
    event = contract.parse({'request_id': 'req-sample'}, message, T0, 65536)
    assert (event.event_type, event.request_id) == (sample['event_type'], 'req-sample')
    assert event.publisher_id == sample['publisher_id']


def test_there_are_samples_to_check():
    assert len(SAMPLES) >= 3


@pytest.fixture
def transport():
    conf = cfg.ConfigOpts()
    conf([])
    messaging.set_transport_defaults(control_exchange='audit-unit-%s' % uuid.uuid4().hex)
    transport = messaging.get_notification_transport(conf, url='fake://')
    yield transport
    messaging.set_transport_defaults(control_exchange=rpc.DEFAULT_EXCHANGE)
    transport.cleanup()


def test_the_workers_notifier_output_is_stored(transport, endpoint, engine):
    server = listener.get_listener(transport, rpc.NOTIFICATION_TOPIC, endpoint,
                                   'audit-unit', 65536, batch_size=8, batch_timeout=0.05)
    server.start()
    try:
        worker = notifications.Notifier(transport, 'compute-unit')
        ctxt = aw_context.RequestContext(request_id='req-from-worker', user_id='u1',
                                         project_id='p1', auth_token='never-stored')
        values = dict(instance_uuid=str(uuid.uuid4()), volume_id=str(uuid.uuid4()),
                      project_id='p1', user_id='u1', request_id='req-from-worker',
                      mountpoint='/dev/vdb', mode='rw', flow='attachments')
        assert worker.notify(ctxt, 'volume_attach', 'start', **values)
        assert worker.notify(ctxt, 'volume_attach', 'error', duration_ms=40, **values,
                             fault={'exception': 'CinderUnavailable', 'message': 'down',
                                    'step': 'attachment_update', 'code': 503})
        deadline = time.monotonic() + 10
        while endpoint.counts['stored'] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        server.stop()
        server.wait()
    assert endpoint.counts == {'stored': 2, 'duplicate': 0, 'rejected': 0, 'requeued': 0}
    [op] = rows(engine, models.operations)
    assert (op['request_id'], op['outcome'], op['host'], op['fault_step']) == (
        'req-from-worker', 'error', 'compute-unit', 'attachment_update')
    assert all('never-stored' not in (e['context'] or '') for e in rows(engine,
                                                                         models.events))

"""No token and no CHAP secret in attachworker's own log lines or in notifications.

The whole-process check (every logger, debug = true, a real worker subprocess)
is tests/functional/test_compute_worker.py; this one runs every outcome path.
"""
import json
import logging
import pathlib

import pytest

from tests import harness
from tests.unit.conftest import CHAP_SECRET
from tests.unit.conftest import TOKEN

INSTANCE = {'uuid': '8f0e3c4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b'}


@pytest.mark.parametrize('flow', ['attachments', 'legacy'])
@pytest.mark.parametrize('failure', [None, 'driver', 'complete'])
def test_no_secret_in_logs_or_notifications(flow, failure, conf, make_manager, cinder_mock,
                                            ctxt, notifications, caplog):
    conf.set_override('attach_flow', flow, group='cinder')
    if failure == 'driver':
        cinder_mock.connection_info['driver_volume_type'] = 'unknown'
    elif failure == 'complete':
        cinder_mock.fail('POST', '/attachments/%s/action' % cinder_mock.attachment_id, 500)
        cinder_mock.fail('POST', '/volumes/%s/action' % cinder_mock.volume_id, 500, 'os-attach')
    with caplog.at_level(logging.DEBUG, logger='attachworker'):
        make_manager().attach_volume(ctxt, INSTANCE, cinder_mock.volume_id, '/dev/vdb')

    published = notifications()
    assert published[-1][0].endswith('.error' if failure else '.end')
    # the CHAP secret really went through the worker
    assert CHAP_SECRET in json.dumps(cinder_mock.connection_info)
    wire = json.dumps([message for _, _, _, message in published])
    for secret in (TOKEN, CHAP_SECRET):
        assert secret not in caplog.text
        assert secret not in wire
    state_dir = pathlib.Path(conf.state_path, 'fake-virt')
    assert bool(harness.fake_virt_record(conf.state_path, INSTANCE['uuid'])) == \
        (failure is None)
    # every byte the driver keeps: the database, its WAL
    assert CHAP_SECRET.encode() not in harness.files_bytes(state_dir)


def test_notification_context_carries_ids_only(make_manager, cinder_mock, ctxt):
    from oslo_messaging.notify import _impl_test as notify_test
    notify_test.reset()
    make_manager().attach_volume(ctxt, INSTANCE, cinder_mock.volume_id, '/dev/vdb')
    sent_ctxt = notify_test.NOTIFICATIONS[-1][0]
    assert set(sent_ctxt) == {'request_id', 'global_request_id', 'user_id', 'project_id'}

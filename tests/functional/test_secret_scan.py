"""One scan of everything the worker and the audit consumer leave behind (issue 8,
finding 11): the worker's log, its journal database, the audit database, the audit
consumer's log and every notification on the wire hold neither the caller's token
nor the CHAP secret, after attaches that succeed, fail and are undone, and after a
kill -9 and recovery, with debug logging on."""
import os
import signal
import subprocess
import time
import uuid

from attachworker import context as aw_context
from tests.functional.audit import harness as audit_harness
from tests.functional.conftest import CHAP_SECRET
from tests.functional.test_kill_backlog import outcomes_by_request
from tests.functional.test_kill_backlog import wait_until

TOKEN = 'gAAAAAB-scan-caller-token-%s' % uuid.uuid4().hex


def files_text(*paths):
    data = b''
    for path in paths:
        for candidate in (path, path.with_name(path.name + '-wal')):
            if candidate.exists():
                data += candidate.read_bytes()
    return data


def test_no_secret_in_logs_journal_audit_store_or_notifications(make_worker, controller,
                                                               cinder, tmp_path):
    worker = make_worker(debug='true', default_log_levels='keystoneauth=DEBUG,'
                         'cinderclient=DEBUG,oslo_messaging=DEBUG,attachworker=DEBUG')
    worker.start()
    ctl = controller(worker)
    broker = audit_harness.Broker(exchange=worker.exchange,
                                  pool='aw-scan-%s' % uuid.uuid4().hex[:8])
    audit_db = tmp_path / 'audit.sqlite'
    serve = audit_harness.Serve(tmp_path / 'audit', broker, 'sqlite:///%s' % audit_db)
    assert serve.command('db', 'upgrade').returncode == 0
    serve.start()
    try:
        cinder.fail('POST', r'/attachments/.*/action', 500, times=1)  # one complete fails
        cinder.fail('DELETE', r'/attachments/', 500, times=2)  # and its undo, twice
        ids = []
        for _ in range(4):
            ctxt = aw_context.RequestContext(auth_token=TOKEN, user_id='u1',
                                             project_id='p1', roles=['member'])
            ids.append(ctxt.request_id)
            ctl.api.attach_volume(ctxt, worker.host, {'uuid': str(uuid.uuid4())},
                                  cinder.add_volume(), '/dev/vdb')
        wait_until(lambda: len(outcomes_by_request(ctl)[0]) >= 4, 60, 'the outcomes', worker)
        # a kill -9 with an attach half done, then recovery with the service credentials
        worker.stop()
        ctxt = aw_context.RequestContext(auth_token=TOKEN, user_id='u1', project_id='p1')
        ids.append(ctxt.request_id)
        ctl.api.attach_volume(ctxt, worker.host, {'uuid': str(uuid.uuid4())},
                              cinder.add_volume(), '/dev/vdb')
        crashed = subprocess.Popen(
            [str(audit_harness.BIN / 'attachworker-compute'), '--config-file',
             str(worker.config)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            env=dict(os.environ, ATTACHWORKER_TEST_CRASH_AT='driver_attach:done'))
        assert crashed.wait(60) == -signal.SIGKILL
        worker.start()
        wait_until(lambda: len(outcomes_by_request(ctl)[0]) >= 5, 60, 'the outcomes', worker)
        time.sleep(2)  # let the audit consumer store what it got
    finally:
        worker.stop()
        serve.stop()
        broker.close()

    # the secrets really went through the worker
    assert any(c.headers.get('X-Auth-Token') == TOKEN for c in cinder.requests)
    assert any(c.method == 'PUT' for c in cinder.requests)  # answered with CHAP data
    logs = worker.logs()
    assert 'DEBUG' in logs and 'Traceback' in logs  # tracebacks were logged too
    wire = '\n'.join(raw if isinstance(raw, str) else raw.decode()
                     for raw in ctl.watcher.raw)
    journal = files_text(worker.state / 'journal.sqlite')
    audit = files_text(audit_db)
    assert wire and journal and audit
    assert b'volume_attach' in audit  # the audit store did store them
    for secret in (TOKEN, CHAP_SECRET):
        assert secret not in logs, 'worker log'
        assert secret not in serve.logs(), 'audit log'
        assert secret not in wire, 'notifications'
        assert secret.encode() not in journal, 'journal'
        assert secret.encode() not in audit, 'audit store'

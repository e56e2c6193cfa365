"""The Notifier says whether the broker took a notification (the outbox relies on it)."""
import oslo_messaging as messaging

from attachworker import context as aw_context
from attachworker import rpc
from attachworker.notifications import Notifier
from attachworker.worker.journal import Journal
from attachworker.worker.outbox import Outbox


def test_a_publish_the_broker_never_took_is_reported_and_kept(conf, tmp_path, caplog):
    rpc.set_defaults(conf)
    # nothing listens on port 1 of loopback: every publish is refused at once
    transport = messaging.get_notification_transport(
        conf, url='rabbit://guest:guest@127.0.0.1:1/')
    notifier = Notifier(transport, 'h1', retry=0)
    ctxt = aw_context.RequestContext()
    assert notifier.notify(ctxt, 'volume_attach', 'start', request_id='req-1') is False
    assert 'Could not publish instance.volume_attach.start' in caplog.text
    journal = Journal(str(tmp_path))
    Outbox(journal, notifier).notify(ctxt, 'volume_attach', 'end', request_id='req-1')
    assert [r['phase'] for r in journal.unsent()] == ['end']
    transport.cleanup()

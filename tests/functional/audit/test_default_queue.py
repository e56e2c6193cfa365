"""The notifier's own queue does not grow unread (issue 12, item 5): with no
``[audit] pool`` (the default), audit consumers read ``versioned_notifications.info``
and ``.error``, the queues the worker's notifier declares and fills."""
import kombu

from attachworker.audit import models
from attachworker.audit import testing
from tests.functional.audit.harness import AMQP
from tests.functional.audit.harness import wait_until

QUEUES = ('versioned_notifications.info', 'versioned_notifications.error')


def depth(queue):
    with kombu.Connection(AMQP) as conn:
        return conn.channel().queue_declare(queue, passive=True)[1]


def test_the_default_consumer_empties_the_notifiers_queues(broker, backend, make_serve):
    serve = make_serve(pool='')
    # unset, as in a config without [audit] pool
    serve.config.write_text(serve.config.read_text().replace('pool = \n', ''))
    assert 'pool' not in serve.config.read_text().split('[audit]')[1]
    publisher = broker.publisher()
    with kombu.Connection(AMQP) as conn:  # what earlier runs left there is not ours
        for queue in QUEUES:
            if _exists(conn, queue):
                kombu.Queue(queue, channel=conn.channel()).purge()
    for n in range(50):
        body = testing.payload('attach', 'start', request_id='req-q-%d' % n)
        publisher.notify('attach', 'start', body)
        publisher.notify('attach', 'error', testing.payload(
            'attach', 'error', request_id='req-q-%d' % n))
    assert depth(QUEUES[0]) >= 50 and depth(QUEUES[1]) >= 50  # the notifier's queues
    serve.start()
    # (the queue names are shared by every exchange's notifier on the vhost: a worker
    # of another test or a benchmark running beside this one fills them too)
    wait_until(lambda: len(ours(backend.rows(models.events))) == 100, 60,
               'every event stored')
    wait_until(lambda: depth(QUEUES[0]) == 0 and depth(QUEUES[1]) == 0, 30,
               'the notifier queues emptied')
    assert serve.stop() == 0
    assert len(ours(backend.rows(models.operations))) == 50


def ours(rows):
    return [r for r in rows if str(r['request_id']).startswith('req-q-')]


def _exists(conn, queue):
    try:
        conn.channel().queue_declare(queue, passive=True)
    except Exception:  # noqa: BLE001 - not declared yet
        return False
    return True

"""The bare reference of tools/bench-attach: what an attach costs with no feature.

An oslo.messaging RPC server with the same threading executor as
attachworker-compute. Its ``attach_volume`` makes the same four cinderclient calls
(get, attachment create, update, complete) with the caller's token, through one
cinderclient cached per token, and publishes one notification. No validation,
journal, masking or undo.

    python tools/bench_reference.py CONFIG_FILE CINDER_URL
"""
import faulthandler
import logging
import signal
import sys
import threading

from cinderclient import client as cinder_client
from keystoneauth1 import session as ks_session
from keystoneauth1 import token_endpoint
from oslo_config import cfg
import oslo_messaging as messaging
from oslo_messaging import opts as messaging_opts

CONNECTOR = {'platform': 'x86_64', 'os_type': 'linux', 'ip': '127.0.0.1',
             'host': 'bench', 'initiator': 'iqn.2004-10.org.bench:host', 'multipath': False}


class Endpoint:
    target = messaging.Target(version='1.2')

    def __init__(self, cinder_url: str, notifier: messaging.Notifier) -> None:
        self._url = cinder_url
        self._notifier = notifier
        self._session = ks_session.Session()
        self._clients: dict = {}
        self._lock = threading.Lock()

    def _client(self, ctxt: dict):
        token, project = ctxt['auth_token'], ctxt['project_id']
        with self._lock:
            if token not in self._clients:
                endpoint = '%s/v3/%s' % (self._url, project)
                self._clients[token] = cinder_client.Client(
                    '3.71', session=self._session,
                    auth=token_endpoint.Token(endpoint, token), endpoint_override=endpoint)
            return self._clients[token]

    def attach_volume(self, ctxt, instance=None, volume_id=None, mountpoint=None,
                      mode='rw', attachment_id=None):
        try:
            self.attach(ctxt, instance, volume_id, mountpoint)
        except Exception as exc:  # noqa: BLE001 - the benchmark reports it
            print('bench-reference: attach failed: %r' % exc, file=sys.stderr, flush=True)
            raise
        print('bench-reference: attached %s' % volume_id, file=sys.stderr, flush=True)

    def attach(self, ctxt, instance, volume_id, mountpoint):
        """The four calls and the notification (tools/bench-parts times both)."""
        self.calls(ctxt, instance, volume_id, mountpoint)
        self._notifier.info(ctxt, 'instance.volume_attach.end',
                            {'request_id': ctxt.get('request_id'), 'volume_id': volume_id})

    def calls(self, ctxt, instance, volume_id, mountpoint):
        c = self._client(ctxt)
        c.volumes.get(volume_id)
        attachment = c.attachments.create(volume_id, None, instance['uuid'])
        c.attachments.update(attachment['id'], dict(CONNECTOR, mountpoint=mountpoint))
        c.attachments.complete(attachment['id'])


def main(argv: list) -> int:
    faulthandler.register(signal.SIGUSR1)  # kill -USR1 PID: where is it stuck?
    logging.basicConfig(level=logging.WARNING)  # failures show in its output
    # oslo.messaging 18.3.1 reads groups it registers only on the global cfg.CONF
    # (oslo_messaging_tracing) in the server's dispatch thread: with a private
    # ConfigOpts every cast fails there, silently (futurist keeps the exception)
    conf = cfg.CONF
    for group, opts in messaging_opts.list_opts():
        conf.register_opts(opts, group=group)
    conf.register_opt(cfg.StrOpt('host'))
    conf(['--config-file', argv[1]])
    transport = messaging.get_rpc_transport(conf)
    notifier = messaging.Notifier(messaging.get_notification_transport(conf),
                                  publisher_id='bare:%s' % conf.host, driver='messagingv2',
                                  topics=['versioned_notifications'])
    server = messaging.get_rpc_server(
        transport, messaging.Target(topic='compute', server=conf.host),
        [Endpoint(argv[2], notifier)], executor='threading')
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    print('bench-reference serving', flush=True)
    while not stop.wait(0.5):
        pass
    server.stop()
    server.wait()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))

"""Which brokers a process names and connects to: every host of transport_url, TLS."""
import ssl

import kombu
from oslo_messaging import opts as messaging_opts
import pytest

from attachworker import outcome
from attachworker import rpc


@pytest.fixture
def conf(conf):
    """With oslo.messaging's options, as every command registers them."""
    for group, opts in messaging_opts.list_opts():
        conf.register_opts(opts, group=group)
    return conf


THREE = 'rabbit://aw:pw-secret@10.0.0.1:5672,aw:pw-secret@10.0.0.2:5673,aw:pw-secret@h3/vh'


def test_the_watcher_fails_over_across_every_host(conf):
    conf.set_override('transport_url', THREE)
    url = outcome.broker_url(conf)
    assert url.count(';') == 2
    hosts = [alt.split('@')[1] for alt in url.split(';')]
    assert hosts == ['10.0.0.1:5672/vh', '10.0.0.2:5673/vh', 'h3:5672/vh']
    connection = kombu.Connection(url, failover_strategy='round-robin')
    assert len(connection.alt) == 3


def test_tls_comes_from_the_rabbit_section(conf):
    conf.set_override('transport_url', 'rabbit://aw:pw@h1/')
    assert outcome.ssl_options(conf) is False
    conf.set_override('ssl', True, group='oslo_messaging_rabbit')
    assert outcome.ssl_options(conf) is True
    assert outcome.broker_url(conf).endswith('@h1:5671/%2F')  # the TLS port
    conf.set_override('ssl_ca_file', '/etc/ssl/ca.pem', group='oslo_messaging_rabbit')
    conf.set_override('ssl_cert_file', '/etc/ssl/me.pem', group='oslo_messaging_rabbit')
    assert outcome.ssl_options(conf) == {'ca_certs': '/etc/ssl/ca.pem',
                                         'cert_reqs': ssl.CERT_REQUIRED,
                                         'certfile': '/etc/ssl/me.pem'}


def test_brokers_are_named_without_their_password(conf):
    conf.set_override('transport_url', THREE)
    assert rpc.brokers(conf) == '10.0.0.1:5672, 10.0.0.2:5673, h3:5672'
    assert 'pw-secret' not in rpc.brokers(conf)

"""Entry points for oslo-config-generator.

``oslo.config.opts = attachworker`` lists our options; ``oslo.config.opts.defaults =
attachworker`` makes the sample show attachworker's defaults of library options
(``control_exchange = attachworker``, not oslo.messaging's ``openstack``;
a bounded ``rabbit_qos_prefetch_count``) and why the thread pool and prefetch
have the sizes they have.
"""
from oslo_config import cfg

from attachworker import conf
from attachworker import rpc


def list_opts():
    return conf.list_opts()


def update_defaults():
    rpc.set_defaults(cfg.ConfigOpts())
    rpc.document_sizing()

"""Entry points for oslo-config-generator.

``oslo.config.opts = attachworker`` lists our options; ``oslo.config.opts.defaults =
attachworker`` makes the sample show attachworker's defaults of library options
(``control_exchange = attachworker``, not oslo.messaging's ``openstack``).
"""
import oslo_messaging

from attachworker import conf


def list_opts():
    return conf.list_opts()


def update_defaults():
    oslo_messaging.set_transport_defaults(control_exchange='attachworker')

"""Entry point for oslo-config-generator (``oslo.config.opts = attachworker``)."""
from attachworker import conf


def list_opts():
    return conf.list_opts()

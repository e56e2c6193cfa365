"""Option registration.

One module per section. Nothing here reads an option: options are read where they
are used, from the ConfigOpts the caller injects (``cfg.CONF`` created once in cmd/).
"""
from oslo_config import cfg

from attachworker.conf import audit
from attachworker.conf import cinder
from attachworker.conf import connector
from attachworker.conf import default
from attachworker.conf import libvirt
from attachworker.conf import metrics
from attachworker.conf import service_user
from attachworker.conf import upgrade_levels
from attachworker.conf import virt
from attachworker.conf import worker

_MODULES = (default, cinder, service_user, virt, libvirt, connector, worker, upgrade_levels,
            audit, metrics)


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register every attachworker option on ``conf``. Safe to call twice."""
    for module in _MODULES:
        module.register_opts(conf)


def list_opts():
    """(group, opts) pairs of every section, for oslo-config-generator."""
    result = []
    for module in _MODULES:
        result.extend(module.list_opts())
    return result

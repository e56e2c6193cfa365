"""[connector]: how the host's connector properties are read (os-brick's format)."""
from oslo_config import cfg

GROUP = 'connector'

connector_opts = [
    cfg.StrOpt('host_root',
               default='/',
               help="""
Root of the file tree the connector properties are read from:
``<host_root>/etc/iscsi/initiatorname.iscsi``, ``<host_root>/sys/class/fc_host``,
``<host_root>/etc/nvme/hostnqn``... Tests and containers point it at a prepared tree.
"""),
    cfg.BoolOpt('use_multipath',
                default=False,
                help='Ask Cinder for multipath connection info (connector ``multipath``).'),
    cfg.BoolOpt('enforce_multipath',
                default=False,
                help="""
Fail the attach when multipath is requested but not available on this host
(connector ``enforce_multipath``).

Related options:

* ``use_multipath``
"""),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(connector_opts, group=GROUP)


def list_opts():
    return [(GROUP, connector_opts)]

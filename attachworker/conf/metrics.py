"""[metrics]: the Prometheus endpoint of attachworker-compute and attachworker-audit."""
from oslo_config import cfg

GROUP = 'metrics'

metrics_opts = [
    cfg.PortOpt('port',
                default=0,
                help="""
TCP port of the Prometheus endpoint (``GET /metrics``) that the service serves.

``0`` (the default) serves no metrics. Each service needs its own port: give
attachworker-compute and attachworker-audit different values when they run on one
host, for example ``9187`` and ``9188``. The metrics and their meaning are listed in
the README's "Metrics" section.
"""),
    cfg.HostAddressOpt('host',
                       default='127.0.0.1',
                       help="""
Address the Prometheus endpoint listens on. The default is reachable from this host
only; set the address of the network Prometheus scrapes from (the endpoint has no
authentication: it shows no secret, volume or request id, only counts).
"""),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(metrics_opts, group=GROUP)


def list_opts():
    return [(GROUP, metrics_opts)]

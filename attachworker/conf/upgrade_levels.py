"""[upgrade_levels]: RPC version caps for rolling upgrades."""
from oslo_config import cfg

GROUP = 'upgrade_levels'

upgrade_levels_opts = [
    cfg.StrOpt('compute',
               help="""
Highest RPC API version the client sends to compute workers, for example ``1.0``
while some hosts still run an older attachworker. Unset: the newest this client
knows.
"""),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(upgrade_levels_opts, group=GROUP)


def list_opts():
    return [(GROUP, upgrade_levels_opts)]

"""Parse the command line and config files of an attachworker command."""
from typing import List
from typing import Optional

from oslo_config import cfg
from oslo_log import log as logging

from attachworker import conf as aw_conf
from attachworker import rpc

#: Quiet by default, even with debug = true: keystoneauth logs response bodies at
#: debug level, and Cinder's connection_info (CHAP secrets) is such a body.
EXTRA_LOG_LEVELS = ['keystoneauth=WARN', 'keystoneauth1=WARN', 'cinderclient=WARN',
                    'kombu=WARN', 'amqp=WARN', 'stevedore=WARN']


def parse_args(conf: cfg.ConfigOpts, argv: List[str], prog: str,
               default_config_files: Optional[List[str]] = None) -> None:
    """Register every option on ``conf``, parse ``argv``, set up oslo.log."""
    aw_conf.register_opts(conf)
    logging.register_options(conf)
    logging.set_defaults(default_log_levels=logging.get_default_log_levels()
                         + EXTRA_LOG_LEVELS)
    rpc.set_defaults(conf)
    conf(argv[1:], project='attachworker', prog=prog,
         default_config_files=default_config_files)
    logging.setup(conf, 'attachworker')

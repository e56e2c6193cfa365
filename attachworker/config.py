"""Parse the command line and config files of an attachworker command."""
import logging as logging_std
from typing import List
from typing import Optional

from oslo_config import cfg
from oslo_log import log as logging
from oslo_messaging import opts as messaging_opts
from oslo_utils import strutils

from attachworker import conf as aw_conf
from attachworker import rpc

#: Quiet by default, even with debug = true: keystoneauth logs response bodies at
#: debug level, and Cinder's connection_info (CHAP secrets) is such a body.
EXTRA_LOG_LEVELS = ['keystoneauth=WARN', 'keystoneauth1=WARN', 'cinderclient=WARN',
                    'kombu=WARN', 'amqp=WARN', 'stevedore=WARN']


class MaskSecrets(logging_std.Filter):
    """Masks passwords, tokens and CHAP secrets in every record a handler writes.

    Our own code never logs a secret; this catches libraries that do at debug level
    (keystoneauth logs Cinder's response bodies, connection_info included).
    """

    def filter(self, record: logging_std.LogRecord) -> bool:
        message = record.getMessage()
        masked = strutils.mask_password(message)
        if masked != message:
            record.msg, record.args = masked, ()
        return True


def parse_args(conf: cfg.ConfigOpts, argv: List[str], prog: str,
               default_config_files: Optional[List[str]] = None) -> None:
    """Register every option on ``conf``, parse ``argv``, set up oslo.log."""
    aw_conf.register_opts(conf)
    rpc.set_defaults(conf)  # before the copies below, so they carry our default
    # oslo.messaging registers some options lazily (executor_thread_pool_size when a
    # server is built, the rabbit ones when a connection is made); register them all
    # now so config files are checked at start-up and they can be read early.
    for group, opts in messaging_opts.list_opts():
        conf.register_opts(opts, group=group)
    logging.register_options(conf)
    logging.set_defaults(default_log_levels=logging.get_default_log_levels()
                         + EXTRA_LOG_LEVELS)
    conf(argv[1:], project='attachworker', prog=prog,
         default_config_files=default_config_files)
    logging.setup(conf, 'attachworker')
    for handler in logging_std.getLogger().handlers:
        handler.addFilter(MaskSecrets())

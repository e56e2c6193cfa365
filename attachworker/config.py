"""Parse the command line and config files of an attachworker command."""
import logging as logging_std
import re
from typing import List
from typing import Optional

from oslo_config import cfg
from oslo_log import log as logging
from oslo_messaging import opts as messaging_opts
from oslo_utils import strutils

from attachworker import conf as aw_conf
from attachworker import rpc

LOG = logging.getLogger(__name__)

#: Quiet by default, even with debug = true: keystoneauth logs response bodies at
#: debug level, and Cinder's connection_info (CHAP secrets) is such a body.
EXTRA_LOG_LEVELS = ['keystoneauth=WARN', 'keystoneauth1=WARN', 'cinderclient=WARN',
                    'kombu=WARN', 'amqp=WARN', 'stevedore=WARN']

#: The commands that attach, detach or undo: they warn about a config that makes
#: Cinder refuse the undo.
WARN_PROGS = ('attachworker-compute', 'attachworker-manage')

#: attachworker-manage's sub-commands that call Cinder (reconcile undoes). The others
#: read local state and print it on stdout, where oslo.log writes by default: a
#: warning there would be noise, and would break ``connector``'s JSON.
MANAGE_CINDER_COMMANDS = ('reconcile',)

#: An HTTP header carrying a token, as an exception text or a request dump prints
#: it (``X-Auth-Token: gAAAA...``); mask_password knows only ``key=value`` and the
#: quoted ``'key': 'value'`` forms. keystoneauth's ``{SHA256}...`` digests are kept:
#: they tell tokens apart without being one.
_TOKEN_HEADER = re.compile(r'(\bX-[A-Za-z-]*Token\s*:\s*)(?!\{SHA256\})[^\s\'",;]+',
                           re.IGNORECASE)

#: Formats a traceback the way logging does by default, for masking.
_PLAIN = logging_std.Formatter()


def mask_secrets(text: str) -> str:
    """``text`` with its passwords, tokens and CHAP secrets replaced by ``***``.

    One line at a time: on a text of several lines (a traceback) one pattern of
    ``strutils.mask_password`` (compiled with re.DOTALL, a greedy ``.*``) also
    deletes text lines away from the secret, such as a chained exception's header
    or its frames (oslo.utils 10.2.0). Within a line it still may: what lies
    between the last two quotes after a secret's key.
    """
    if not text:
        return text
    return ''.join(_TOKEN_HEADER.sub(r'\g<1>***', strutils.mask_password(line))
                   for line in text.splitlines(keepends=True))


class MaskSecrets(logging_std.Filter):
    """Masks passwords, tokens and CHAP secrets in every record a handler writes.

    Our own code never logs a secret; this catches libraries that do at debug level
    (keystoneauth logs Cinder's response bodies, connection_info included) and
    exceptions whose text carries one: the message, the traceback (chained
    exceptions included) and ``stack_info`` are masked.

    A traceback is formatted once here; when masking changed it, the masked text
    becomes ``exc_text`` and ``exc_info`` is dropped, since formatters (oslo.log's
    always) format ``exc_info`` again and would print the secret. A traceback with
    nothing to mask keeps its ``exc_info``, so each formatter lays it out as usual
    (oslo.log's per-line prefix, the JSON ``traceback`` field).
    """

    def filter(self, record: logging_std.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - bad args: the handler reports it
            message = None
        if message is not None:
            masked = mask_secrets(message)
            if masked != message:
                record.msg, record.args = masked, ()
        if record.exc_info:
            text = _PLAIN.formatException(record.exc_info)
            masked = mask_secrets(text)
            if masked != text:
                record.exc_info, record.exc_text = None, masked
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        return True


class MaskingFormatter(logging_std.Formatter):
    """Masks what another formatter wrote.

    oslo.log's formatters add text that no record field holds: the summary of the
    exception being handled (``... failed: RuntimeError: <its text>``) appended to
    every WARNING or worse line, taken from ``sys.exc_info()`` when the record has
    no ``exc_info``. Only the finished line shows it.
    """

    def __init__(self, inner: Optional[logging_std.Formatter]) -> None:
        super().__init__()
        self.inner = inner or logging_std.Formatter()

    def format(self, record: logging_std.LogRecord) -> str:
        out = self.inner.format(record)
        return mask_secrets(out) if isinstance(out, str) else out

    def formatException(self, ei) -> str:
        return mask_secrets(self.inner.formatException(ei))


def mask_handler(handler: logging_std.Handler) -> None:
    """Make ``handler`` mask secrets (idempotent)."""
    if not any(isinstance(f, MaskSecrets) for f in handler.filters):
        handler.addFilter(MaskSecrets())
    if not isinstance(handler.formatter, MaskingFormatter):
        handler.setFormatter(MaskingFormatter(handler.formatter))


def warn_about_config(conf: cfg.ConfigOpts) -> None:
    """Log a warning for each setting that makes the worker fail later."""
    if not conf.service_user.send_service_user_token:
        LOG.warning('[service_user] send_service_user_token is false: Cinder refuses to '
                    'delete an attachment that has connection info unless a service token '
                    'comes with the request (OSSA-2023-003), so detaching and undoing a '
                    'failed attach will fail. Set it to true, with the [service_user] auth '
                    'options of a user holding the service role.')


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
        mask_handler(handler)
    if _calls_cinder(conf, prog):
        warn_about_config(conf)


def _calls_cinder(conf: cfg.ConfigOpts, prog: str) -> bool:
    if prog not in WARN_PROGS:
        return False
    if prog != 'attachworker-manage':
        return True
    try:
        command = conf.command.name
    except cfg.NoSuchOptError:  # no sub-command registered: assume the worst
        return True
    return command in MANAGE_CINDER_COMMANDS

"""attachworker-manage: administer this compute host.

    attachworker-manage --config-file /etc/attachworker/attachworker.conf connector

Each sub-command is one entry in ``COMMANDS``: its help, a function adding its
arguments (or nested sub-commands, e.g. ``journal list|show``) to its parser, and
the handler ``handler(conf) -> exit code``. Parsed arguments are read back from
``conf.command``: ``conf.command.name`` and ``conf.command.<dest>``.
"""
import json
import sys
from typing import Callable
from typing import NamedTuple
from typing import Optional

from oslo_config import cfg
from oslo_log import log as logging

from attachworker import connector
from attachworker import exception
import attachworker.conf

LOG = logging.getLogger(__name__)


class Command(NamedTuple):
    help: str
    add_arguments: Callable  # (argparse parser) -> None
    handler: Callable[[cfg.ConfigOpts], int]


def _no_arguments(parser) -> None:
    pass


def connector_show(conf: cfg.ConfigOpts) -> int:
    """Print the connector properties this host sends to Cinder, as sorted JSON."""
    props = connector.get_connector_properties(conf)
    print(json.dumps(props, indent=2, sort_keys=True))
    return 0


COMMANDS: dict[str, Command] = {
    'connector': Command('Show the host connector properties sent to Cinder.',
                         _no_arguments, connector_show),
}


def _add_command_parsers(subparsers) -> None:
    for name, command in COMMANDS.items():
        parser = subparsers.add_parser(name, help=command.help)
        command.add_arguments(parser)


command_opt = cfg.SubCommandOpt('command', title='Commands',
                                handler=_add_command_parsers,
                                help='Available commands')


def run(conf: cfg.ConfigOpts, argv: Optional[list[str]] = None) -> int:
    """Parse ``argv`` into ``conf`` and run the chosen command; the exit code."""
    conf.register_cli_opt(command_opt)
    attachworker.conf.register_opts(conf)
    logging.register_options(conf)
    conf(argv, project='attachworker', prog='attachworker-manage')
    logging.setup(conf, 'attachworker')
    try:
        return COMMANDS[conf.command.name].handler(conf)
    except exception.AttachWorkerException as exc:
        # Expected operator errors (bad host_root...): a message, not a traceback.
        print('Error: %s' % exc, file=sys.stderr)
        return 1


def main() -> None:
    sys.exit(run(cfg.CONF, sys.argv[1:]))

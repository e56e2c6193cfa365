"""tools/lib/daemons.py from the shell (tools/local-cloud): stdlib only, any python3 >= 3.8.

    daemons_cli.py running PIDFILE            its PID if it is still ours (exit 0), else exit 1
    daemons_cli.py stop PIDFILE [--label L] [--kids-label L] [--timeout S]
                                              TERM it and its descendants, wait, KILL; rm PIDFILE
    daemons_cli.py sweep [--label L] [--timeout S]   the same for every process with the marker
    daemons_cli.py start PIDFILE --log LOG [--wait S] [--settle S] -- ARGV...
                                              detached, own session, only fds 0-2; prints its PID
    daemons_cli.py descendants PID            one PID a line

The marker (what /proc/PID/cmdline must contain to be ours) comes from ``-m TEXT``
(repeatable: all of them) or, when there is no -m, from $DAEMONS_MARKER (one a line).
Prefer the environment when sweeps may run beside this process: a marker in our own
command line makes us look like one of the processes it describes.
Messages go to stdout (errors to stderr), each line prefixed by --prefix.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemons  # noqa: E402  (tools/lib is not a package)


def _parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument('-m', '--marker', action='append', default=[],
                        help='text the cmdline must contain (default: $DAEMONS_MARKER)')
    common.add_argument('--prefix', default='', help='put before every message line')
    parser = argparse.ArgumentParser(prog='daemons_cli.py', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('running', parents=[common])
    p.add_argument('pidfile')
    p = sub.add_parser('stop', parents=[common])
    p.add_argument('pidfile')
    p.add_argument('--label', default='process')
    p.add_argument('--kids-label', help='default: LABEL children')
    p.add_argument('--timeout', type=float, default=20.0, help='seconds from TERM to KILL')
    p = sub.add_parser('sweep', parents=[common])
    p.add_argument('--label', default='process', help='logged as "stray LABEL"')
    p.add_argument('--timeout', type=float, default=20.0, help='seconds from TERM to KILL')
    p = sub.add_parser('start', parents=[common])
    p.add_argument('pidfile')
    p.add_argument('--log', required=True, help='stdout and stderr are appended here')
    p.add_argument('--wait', type=float, default=30.0,
                   help='seconds for the marker to show up (a process title set late)')
    p.add_argument('--settle', type=float, default=0.3,
                   help='seconds it must then stay alive')
    p.add_argument('argv', nargs='+', help='the command (after --)')
    p = sub.add_parser('descendants', parents=[common])
    p.add_argument('pid', type=int)
    return parser


def _marker(parser, args):
    env = os.environ.pop('DAEMONS_MARKER', '')   # not for the daemons we start
    markers = args.marker or [m for m in env.split('\n') if m]
    if not markers or not all(markers):
        parser.error('a non-empty marker is needed: -m TEXT or $DAEMONS_MARKER')
    return tuple(markers)


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)

    def say(text, stream=sys.stdout):
        for line in text.splitlines() or ['']:
            print(args.prefix + line, file=stream, flush=True)

    if args.command == 'descendants':
        for pid in daemons.descendants(args.pid):
            print(pid)
        return 0
    marker = _marker(parser, args)
    if args.command == 'running':
        pid = daemons.running(args.pidfile, marker)
        if pid:
            print(pid)
        return 0 if pid else 1
    if args.command == 'stop':
        daemons.stop_pidfile(args.pidfile, marker, args.label, args.timeout, say,
                             kids_label=args.kids_label)
        return 0
    if args.command == 'sweep':
        daemons.sweep(marker, args.label, args.timeout, say)
        return 0
    try:   # start
        pid = daemons.start(args.argv, args.pidfile, marker, args.log, timeout=args.wait,
                            settle=args.settle)
    except (daemons.StartError, OSError) as exc:
        say(str(exc).rstrip('\n'), sys.stderr)
        return 1
    print(pid)
    return 0


if __name__ == '__main__':
    sys.exit(main())

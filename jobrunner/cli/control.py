"""The control commands of the `jobrunner` CLI: queue pause|resume|purge, quiet, stop.

The logic lives in ``jobrunner/ops/control.py``. With ``--json`` each prints one JSON object,
documented in ``docs/operations.md``:

queue pause|resume|purge QUEUE::

    {"schema": 1, "action", "queue", "backends": {...},
     "results": [{"backend", "queue", "action", "paused": <bool>, "purged": <int> | null}]}

quiet|stop IDENTITY::

    {"schema": 1, "action": "quiet" | "stop", "identity", "sent_to": [<backend>],
     "backends": {...}}
"""

import sys

from jobrunner.cli import common as cli
from jobrunner.cli.output import emit_json


def _ops():
    from jobrunner.ops import control
    return control


def add_commands(commands):
    """Add ``queue``, ``quiet`` and ``stop`` to the CLI's subparsers."""
    queue = commands.add_parser("queue", help="pause, resume or purge a queue")
    sub = queue.add_subparsers(dest="queue_command")
    for action, text in (("pause", "no supervisor starts its jobs until resumed; they wait"),
                         ("resume", "let supervisors start its jobs again"),
                         ("purge", "delete the jobs waiting in it (not scheduled, retrying, "
                                   "running or dead ones)")):
        parser = sub.add_parser(action, help=text)
        parser.add_argument("queue", metavar="QUEUE", help="the queue's name")
        cli.operator_flags(parser)
        if action == "purge":
            parser.add_argument("--yes", action="store_true",
                                help="really delete them (purge refuses without it)")
        parser.set_defaults(handler=cli.guarded(cmd_queue), action=action)
    queue.set_defaults(handler=lambda args: cli.usage(queue))
    for action, text in (("quiet", "ask a supervisor to start no new jobs (SIGTSTP)"),
                         ("stop", "ask a supervisor to stop gracefully (SIGTERM)")):
        parser = commands.add_parser(action, help=text)
        parser.add_argument("identity", metavar="IDENTITY",
                            help="the supervisor's identity, as `jobrunner busy` lists it")
        cli.operator_flags(parser)
        parser.set_defaults(handler=cli.guarded(cmd_signal), action=action)


def cmd_queue(args):
    if args.action == "purge" and not args.yes:
        print(f"jobrunner: queue purge deletes every job waiting in {args.queue}; "
              "pass --yes to do it", file=sys.stderr)
        return cli.EXIT_USAGE
    with cli.session(args) as session:
        result = _ops().queue_action(session, args.action, args.queue,
                                     anywhere=args.backend is not None)
        code = cli.reachability_code(session)
    if args.json:
        emit_json(result)
    for entry in result["results"]:
        if not args.json:
            print(_queue_line(entry))
    if not result["results"]:
        print(f"jobrunner: no backend has a queue {args.queue!r} (pass --backend to "
              f"{args.action} it anyway)", file=sys.stderr)
        if code == cli.EXIT_OK:
            code = cli.EXIT_NOT_FOUND
    return code


def _queue_line(entry):
    where = f"{entry['backend']} queue {entry['queue']}"
    if entry["action"] == "purge":
        return f"purged {where}: {entry['purged']} waiting job(s) deleted"
    return f"{'paused' if entry['paused'] else 'resumed'} {where}"


def cmd_signal(args):
    with cli.session(args) as session:
        result = _ops().signal(session, args.action, args.identity)
        code = cli.reachability_code(session)
    if args.json:
        emit_json(result)
    elif result["sent_to"]:
        wish = "go quiet" if args.action == "quiet" else "stop"
        for name in result["sent_to"]:
            print(f"asked {name} supervisor {args.identity} to {wish}")
    if not result["sent_to"]:
        print(f"jobrunner: no live supervisor {args.identity} (see `jobrunner busy`)",
              file=sys.stderr)
        if code == cli.EXIT_OK:
            code = cli.EXIT_NOT_FOUND
    return code

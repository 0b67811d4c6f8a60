"""What the `jobrunner` commands share: exit codes, the error that carries one, common flags."""

import functools
import sys

from jobrunner.process.exits import (EXIT_BOOT, EXIT_ERROR, EXIT_IMPORT, EXIT_NOT_FOUND,
                                     EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE)

__all__ = ["EXIT_BOOT", "EXIT_ERROR", "EXIT_IMPORT", "EXIT_NOT_FOUND", "EXIT_OK",
           "EXIT_UNAVAILABLE", "EXIT_USAGE", "CliError", "admin", "connection_flags", "guarded",
           "operator_flags", "reachability_code", "report", "session", "usage"]


class CliError(Exception):
    """Ends a command with exit ``code`` and ``message`` on stderr."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def connection_flags(parser, redis: bool = True) -> None:
    """The flags that name the servers, on a command's ``parser``."""
    parser.add_argument("--pg-dsn", help="Postgres DSN (else JOBRUNNER_PG_DSN, DATABASE_URL)")
    if redis:
        parser.add_argument("--redis-url", help="Redis URL (else JOBRUNNER_REDIS_URL, REDIS_URL)")


def admin():
    """The operator logic, imported on use: it loads both drivers, which `jobrunner run`
    (whose parser includes every command) should not carry into every child."""
    from jobrunner.ops import admin as ops_admin
    return ops_admin


def _lost():
    """Driver errors that mean a server went away in the middle of a command."""
    from jobrunner.backends import connection_errors
    return connection_errors()


def guarded(handler, code=None):
    """``handler`` with a lost connection turned into exit ``code`` (default 4) and a message."""
    @functools.wraps(handler)
    def run(args):
        try:
            return handler(args)
        except _lost() as exc:
            raise CliError(EXIT_UNAVAILABLE if code is None else code,
                           f"lost the connection to a backend: {str(exc).strip()}") from None
    return run


def operator_flags(parser) -> None:
    """The flags every operator command takes: servers, ``--backend``, ``--json``."""
    from jobrunner.backends import NAMES
    connection_flags(parser)
    parser.add_argument("--backend", choices=NAMES, help="only this backend")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def usage(parser):
    """Print ``parser``'s help on stderr and end with the usage exit code."""
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def session(args):
    """An ``ops.admin.Session`` over the backends the command's flags select."""
    return admin().Session({"pg_dsn": args.pg_dsn, "redis_url": args.redis_url},
                           only=args.backend)


def reachability_code(opened):
    """EXIT_UNAVAILABLE, with the reasons on stderr, unless every needed backend answered."""
    if opened.inspectors and not opened.unavailable():
        return EXIT_OK
    for name, status in opened.status.items():
        if status["status"] != admin().OK:
            print(f"jobrunner: {name} {status['status']}: {status['error']}", file=sys.stderr)
    if not opened.inspectors:
        print("jobrunner: no backend answered; set --pg-dsn / --redis-url or their environment "
              "variables", file=sys.stderr)
    return EXIT_UNAVAILABLE


def report(args, compute, render):
    """The common command: ``compute(session)`` over the selected backends, printed as JSON
    with ``--json`` or as ``render(result)``; returns the reachability exit code."""
    from jobrunner.cli.output import emit_json, out
    with session(args) as opened:
        result = compute(opened)
        code = reachability_code(opened)
    if args.json:
        emit_json(result)
    else:
        out(render(result))
    return code

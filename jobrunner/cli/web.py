"""`jobrunner web`: serve the dashboard (``jobrunner/web``) on one address, 127.0.0.1 unless told.

The dashboard needs Flask (``pip install 'jobrunner[web]'``); it is imported only when the
command runs, so ``jobrunner run`` and its children never load it.
"""

import os
import sys

from jobrunner.cli import common as cli

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def add_commands(commands):
    """Add ``web`` to the CLI's subparsers."""
    from jobrunner.backends import NAMES
    parser = commands.add_parser("web", help="serve the web dashboard")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 for every "
                             "interface)")
    parser.add_argument("--port", type=int, default=9292, help="port (default 9292)")
    parser.add_argument("--basic-auth", metavar="USER:PASS",
                        help="ask for this user and password (else JOBRUNNER_WEB_BASIC_AUTH)")
    parser.add_argument("--read-only", action="store_true",
                        help="show everything, change nothing: no buttons, every POST is 403")
    cli.connection_flags(parser)
    parser.add_argument("--backend", choices=NAMES, help="only this backend")
    parser.set_defaults(handler=cmd_web)


def cmd_web(args):
    try:
        from jobrunner.web import make_app
    except ImportError as exc:
        raise cli.CliError(cli.EXIT_USAGE, str(exc)) from None
    from werkzeug.serving import make_server
    basic_auth = args.basic_auth or os.environ.get("JOBRUNNER_WEB_BASIC_AUTH") or ""
    try:
        app = make_app({"pg_dsn": args.pg_dsn, "redis_url": args.redis_url},
                       backends=[args.backend] if args.backend else None,
                       read_only=args.read_only, basic_auth=basic_auth)
    except ValueError as exc:
        raise cli.CliError(cli.EXIT_USAGE, f"--basic-auth: {exc}") from None
    if args.host not in LOOPBACK and not basic_auth:
        print(f"jobrunner web: warning: listening on {args.host} without --basic-auth: "
              "anyone who reaches this port can act on your jobs", file=sys.stderr)
    try:
        server = make_server(args.host, args.port, app, threaded=True)
    except OSError as exc:
        raise cli.CliError(cli.EXIT_USAGE, f"cannot listen on {args.host}:{args.port}: "
                                           f"{exc.strerror or exc}") from None
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"jobrunner web: serving the dashboard on http://{host}:{server.port}/"
          f"{' (read-only)' if args.read_only else ''}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return cli.EXIT_OK

"""The `jobrunner` command: run a supervisor, install pgmq, inspect queues.

Commands: ``run``, ``pgmq install``, and the operator commands: ``stats`` and ``check``
(``cli/admin.py``); ``retries``, ``scheduled``, ``dead``, ``job`` and ``busy``
(``cli/jobs.py``); ``queue pause|resume|purge``, ``quiet`` and ``stop`` (``cli/control.py``);
``web``, the dashboard (``cli/web.py``).

Exit codes:
    0  success
    1  unexpected error; for ``check``: unhealthy (the reason is on stderr)
    2  bad arguments or settings
    3  the registry could not be imported (MODULE:ATTR)
    4  a backend is unreachable or not set up
    5  a pool's children kept dying at start; the supervisor gave up
    6  not found: a job action's ids (or an ambiguous msg_id), ``job ID``, the queue of
       ``queue ...`` or the supervisor of ``quiet|stop``
"""

import argparse
import importlib
import logging
import os
import sys
import traceback

from jobrunner import config
from jobrunner import log as logsetup
from jobrunner.errors import BackendUnavailable, ConfigError
from jobrunner.version import __version__

from jobrunner.cli import admin as cli_admin
from jobrunner.cli import control as cli_control
from jobrunner.cli import jobs as cli_jobs
from jobrunner.cli import web as cli_web
from jobrunner.cli.common import (EXIT_BOOT, EXIT_IMPORT, EXIT_OK, EXIT_UNAVAILABLE,
                                  EXIT_USAGE, CliError, connection_flags)

log = logging.getLogger("jobrunner.cli")


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.handler(args) or EXIT_OK
    except CliError as exc:
        print(f"jobrunner: {exc}", file=sys.stderr)
        return exc.code
    except ConfigError as exc:
        print(f"jobrunner: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BackendUnavailable as exc:
        print(f"jobrunner: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE


def _parser():
    parser = argparse.ArgumentParser(prog="jobrunner", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"jobrunner {__version__}")
    commands = parser.add_subparsers(dest="command")

    run = commands.add_parser("run", help="run a supervisor in the foreground")
    run.add_argument("target", metavar="MODULE:ATTR", help="where the Registry is, e.g. app.jobs:registry")
    connection_flags(run)
    run.add_argument("--processes", type=int, help="children per backend pool")
    run.add_argument("--shutdown-timeout", type=float, help="seconds running jobs get at stop")
    run.add_argument("--queues", help="queues to serve, in priority order: a,b")
    run.add_argument("--pool", dest="pools", action="append",
                     help="a dedicated pool, repeatable: QUEUES=N[:weighted], e.g. critical=2")
    run.add_argument("--sidekiq-fetch", choices=("reliable", "basic"),
                     help="reliable (default): a fetched job waits in the child's in-flight "
                          "list until settled; basic: Sidekiq's BRPOP, a crash loses it")
    run.add_argument("--sidekiq-version", metavar="X.Y",
                     help="the Ruby Sidekiq sharing the Redis (6.4, 7.3, 8.1; default 8.1): "
                          "how retry_for counts and which Metrics keys are written")
    run.add_argument("--max-jobs", type=int, help="recycle a child after this many jobs")
    run.add_argument("--max-rss-mb", type=float, help="recycle a child above this RSS")
    run.add_argument("--timeout-grace", type=float,
                     help="seconds past a job's timeout before its child is killed (default 5)")
    run.add_argument("--heartbeat-timeout", type=float,
                     help="seconds an idle child may stay silent before it is killed (default 30)")
    run.add_argument("--pgmq-install", action="store_true", default=None,
                     help="install pgmq at start when it is missing")
    run.add_argument("--log-level", help="DEBUG, INFO (default), WARNING, ERROR or CRITICAL")
    run.add_argument("--log-format", choices=("text", "json"),
                     help="text (default) or one JSON object per line")
    run.add_argument("--metrics-port", type=int,
                     help="serve Prometheus metrics on this port at /metrics (default: off)")
    run.add_argument("--metrics-host",
                     help="address the metrics endpoint listens on (default 127.0.0.1; "
                          "0.0.0.0 for every interface)")
    run.set_defaults(handler=cmd_run)

    pgmq = commands.add_parser("pgmq", help="pgmq administration")
    pgmq_commands = pgmq.add_subparsers(dest="pgmq_command")
    install = pgmq_commands.add_parser("install", help="install the pgmq schema (idempotent)")
    connection_flags(install, redis=False)
    install.set_defaults(handler=cmd_pgmq_install)

    cli_admin.add_commands(commands)
    cli_jobs.add_commands(commands)
    cli_control.add_commands(commands)
    cli_web.add_commands(commands)
    return parser


def load_registry(target):
    """Import ``MODULE:ATTR`` and return the Registry it names."""
    from jobrunner.registry import Registry
    module_name, _, attr_name = target.partition(":")
    if not module_name or not attr_name:
        raise CliError(EXIT_USAGE, f"expected MODULE:ATTR, got {target!r}")
    module = _import_app(module_name)
    registry = getattr(module, attr_name, _MISSING)
    if isinstance(registry, Registry):
        return registry
    found = sorted(f"{module_name}:{name}" for name, value in vars(module).items()
                   if isinstance(value, Registry))
    there = (f"; the module's Registry objects: {', '.join(found)}" if found
             else "; the module has no Registry object")
    if registry is _MISSING:
        raise CliError(EXIT_IMPORT, f"module {module_name!r} has no attribute {attr_name!r}"
                                    f"{there}")
    raise CliError(EXIT_IMPORT, f"{target} is {registry!r}, not a jobrunner.Registry{there}")


#: What ``getattr`` gives for a name the module does not have (an attribute may be None).
_MISSING = object()


def _import_app(module_name):
    """The app's module; if its import fails, a CliError with the error's traceback."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())     # like `python -m`, find the app's own modules
    try:
        return importlib.import_module(module_name)
    except Exception as exc:
        trace = _app_traceback(exc)
        raise CliError(EXIT_IMPORT, f"cannot import {module_name!r}: {type(exc).__name__}: "
                                    f"{exc}" + (f"\n{trace}" if trace else "")) from None


def _app_traceback(exc):
    """The traceback of ``exc`` from the app's first frame: the frames of this module and of
    the import system before it say nothing about the app. Empty when what is left is only
    the error's own line (the module itself was not found), which the first line says."""
    frames = exc.__traceback__
    while frames is not None and _is_import_machinery(frames.tb_frame.f_code.co_filename):
        frames = frames.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, frames)).rstrip()
    return text if "\n" in text else ""


def _is_import_machinery(filename):
    return filename in (__file__, importlib.__file__) or filename.startswith("<frozen importlib")


def cmd_run(args):
    from jobrunner.backends import make_backend
    from jobrunner.ops.supervisor import PoolBootError, Supervisor
    flags = {key: getattr(args, key, None) for key in (
        "pg_dsn", "redis_url", "processes", "shutdown_timeout", "queues", "sidekiq_fetch",
        "sidekiq_version", "max_jobs", "max_rss_mb", "timeout_grace", "heartbeat_timeout", "pgmq_install",
        "log_level", "log_format", "metrics_port", "metrics_host", "pools")}
    settings = config.resolve(flags=flags)
    registry = load_registry(args.target)
    # After the import: logging the app configured there is the app's (see logsetup.setup).
    logsetup.setup(settings.log_level, settings.log_format)
    supervisor = Supervisor(registry, settings=settings)
    # From here a TERM is a clean stop, even while the checks below still wait on a server.
    supervisor.signals.install()
    for name in registry.backends():
        for warning in make_backend(name, settings, registry).check():
            log.warning("%s: %s", name, warning)
    for worker in registry.workers():
        log.info("registered %s (queue %s, backends %s)", worker.name, worker.queue,
                 ",".join(b for b in registry.backends() if worker in registry.workers(b)))
    try:
        return supervisor.run()
    except PoolBootError as exc:
        raise CliError(EXIT_BOOT, str(exc)) from None


def cmd_pgmq_install(args):
    from jobrunner.backends import make_backend
    settings = config.resolve(flags={"pg_dsn": args.pg_dsn})
    print(make_backend(args.command, settings).install())
    return EXIT_OK

"""``manage.py jobrunner [MODULE:ATTR] [flags of jobrunner run]``: a supervisor that runs the
project's Django Tasks (and the workers of the Registry ``MODULE:ATTR`` names)."""

import sys
import traceback
from importlib import import_module

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connections
from django.utils.module_loading import autodiscover_modules

from jobrunner.cli import main as cli
from jobrunner.cli.common import EXIT_IMPORT, EXIT_USAGE, CliError
from jobrunner.contrib.django import runner
from jobrunner.errors import ConfigError

USAGE = """usage: manage.py jobrunner [MODULE:ATTR] [flags of `jobrunner run`]

Runs a jobrunner supervisor for every task of the TASKS backends that use
jobrunner.contrib.django.JobrunnerBackend (found in each app's tasks module and in the
modules the URLconf imports), and for the workers of the jobrunner Registry MODULE:ATTR when
given. Postgres is the database of the backends' OPTIONS['database'] unless --pg-dsn names
another; everything else is set as for `jobrunner run`, whose flags follow.
"""

#: Django's own options, which manage.py has applied before it loads the command.
DJANGO_OPTIONS = ("--settings", "--pythonpath")

#: The libpq keywords a DSN for the supervisor takes from Django's connection parameters.
LIBPQ_KEYWORDS = ("dbname", "user", "password", "host", "hostaddr", "port", "passfile",
                  "service", "options", "application_name", "connect_timeout", "sslmode",
                  "sslrootcert", "sslcert", "sslkey", "sslpassword", "sslcrl",
                  "target_session_attrs", "gssencmode", "channel_binding")


class Command(BaseCommand):
    help = USAGE.split("\n\n", 1)[1].replace("\n", " ").strip()

    def run_from_argv(self, argv):
        args = _without_django_options(argv[2:])
        if "-h" in args or "--help" in args:
            self.stdout.write(USAGE)
            cli.main(["run", "--help"])      # the flags; argparse exits
        sys.exit(self.serve(args))

    def handle(self, *args, **options):
        code = self.serve(list(args))
        if code:
            raise CommandError(f"the supervisor exited with {code}", returncode=code)

    def serve(self, args):
        """Build the registry and run ``jobrunner run`` on it; the exit code."""
        target = args.pop(0) if args and not args[0].startswith("-") else None
        try:
            self.check()                 # the system checks; they import the URLconf too
            try:
                backends = _discover()
            except Exception as exc:
                raise CliError(EXIT_IMPORT, "cannot import the modules that define tasks:\n"
                               + "".join(traceback.format_exception(exc)).rstrip()) from None
            extra = cli.load_registry(target) if target else None
            if not backends and extra is None:
                raise ConfigError("no TASKS backend uses jobrunner.contrib.django."
                                  "JobrunnerBackend, and no MODULE:ATTR was given")
            runner.REGISTRY = runner.build_registry(backends, extra)
            flags = [] if _names_flag(args, "--pg-dsn") else _pg_dsn_flag(backends)
        except CliError as exc:
            self.stderr.write(f"jobrunner: {exc}")
            return exc.code
        except (ConfigError, CommandError) as exc:
            self.stderr.write(f"jobrunner: {exc}")
            return EXIT_USAGE
        # The children connect after the fork; none may share a connection opened here.
        connections.close_all()
        return cli.main(["run", f"{runner.__name__}:REGISTRY", *flags, *args])


def _discover():
    """The project's ``JobrunnerBackend`` instances, once every module that may define one of
    their tasks is imported: each app's ``tasks`` module and the URLconf (with its views)."""
    from jobrunner.contrib.django.backend import JobrunnerBackend
    from jobrunner.contrib.django.compat import task_backends
    autodiscover_modules("tasks")
    if getattr(settings, "ROOT_URLCONF", None):
        import_module(settings.ROOT_URLCONF)
    return [backend for backend in (task_backends[alias] for alias in task_backends.settings)
            if isinstance(backend, JobrunnerBackend)]


def _pg_dsn_flag(backends):
    """``--pg-dsn`` for the database the pgmq backends enqueue on, from Django's settings."""
    databases = sorted({b.database for b in backends if b.jobrunner_backend == "pgmq"})
    if not databases:
        return []
    if len(databases) > 1:
        raise ConfigError(f"the pgmq TASKS backends use the databases {', '.join(databases)}; "
                          "one supervisor serves one: run one per database with --pg-dsn")
    params = connections[databases[0]].get_connection_params()
    return ["--pg-dsn", " ".join(f"{key}={_libpq_quote(params[key])}"
                                 for key in LIBPQ_KEYWORDS if params.get(key) not in (None, ""))]


def _libpq_quote(value):
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def _names_flag(args, flag):
    return any(arg == flag or arg.startswith(flag + "=") for arg in args)


def _without_django_options(args):
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in DJANGO_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{option}=" for option in DJANGO_OPTIONS)):
            kept.append(arg)
    return kept

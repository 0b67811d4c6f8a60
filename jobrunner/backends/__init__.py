"""The backends by name. Importing this imports no driver: each backend package only adds its
name and queue-name rule to the registry (``registry.add_backend``); the modules that talk to
a server, and their drivers, load when ``make_backend`` asks for them."""

from jobrunner.backends import pgmq, sidekiq
from jobrunner.backends.base import Backend

#: Every backend, in the order commands and pools list them.
NAMES = (pgmq.NAME, sidekiq.NAME)


def make_backend(name: str, settings, registry=None) -> Backend:
    """A ``Backend`` for ``name``; ``registry`` may be None for operator commands."""
    if name == pgmq.NAME:
        from jobrunner.backends.pgmq.backend import PgmqBackend
        return PgmqBackend(settings, registry)
    if name == sidekiq.NAME:
        from jobrunner.backends.sidekiq.backend import SidekiqBackend
        return SidekiqBackend(settings, registry)
    raise ValueError(f"unknown backend {name!r}")


def connection_errors() -> tuple:
    """The driver exceptions of every backend that mean "the server went away"."""
    errors = ()
    for name in NAMES:
        errors += type(make_backend(name, None)).connection_errors
    return errors

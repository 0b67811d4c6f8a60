"""The backends by name. Importing this imports no driver: each backend package only adds its
name and queue-name rule to the registry (``registry.add_backend``); the modules that talk to
a server, and their drivers, load when ``make_backend`` asks for them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jobrunner.backends import pgmq, sidekiq
from jobrunner.backends.base import Backend

if TYPE_CHECKING:
    from jobrunner.config import Settings
    from jobrunner.registry import Registry

#: Every backend, in the order commands and pools list them.
NAMES = (pgmq.NAME, sidekiq.NAME)


def make_backend(name: str, settings: Settings, registry: Registry | None = None) -> Backend:
    """A ``Backend`` for ``name``; ``registry`` may be None for operator commands."""
    if name == pgmq.NAME:
        from jobrunner.backends.pgmq.backend import PgmqBackend
        return PgmqBackend(settings, registry)
    if name == sidekiq.NAME:
        from jobrunner.backends.sidekiq.backend import SidekiqBackend
        return SidekiqBackend(settings, registry)
    raise ValueError(f"unknown backend {name!r}")


def connection_errors() -> tuple[type[BaseException], ...]:
    """The driver exceptions of every backend that mean "the server went away"."""
    errors: tuple[type[BaseException], ...] = ()
    for name in NAMES:
        # no settings: only the class is wanted, for its class attribute
        errors += type(make_backend(name, None)).connection_errors  # type: ignore[arg-type]
    return errors

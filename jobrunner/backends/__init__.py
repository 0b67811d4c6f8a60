"""The backends by name; each module imports its own driver only when used."""


def make_backend(name, settings, registry):
    """A ``Backend`` for ``name`` ("pgmq" or "sidekiq")."""
    if name == "pgmq":
        from jobrunner.backends.pgmq.backend import PgmqBackend
        return PgmqBackend(settings, registry)
    if name == "sidekiq":
        from jobrunner.backends.sidekiq.backend import SidekiqBackend
        return SidekiqBackend(settings, registry)
    raise ValueError(f"unknown backend {name!r}")

"""jobrunner: background jobs for Python web apps on Postgres (pgmq) or Redis (Sidekiq's format)."""

from .errors import BackendUnavailable, ConfigError, JobrunnerError, JobTimeout, Retry
from .job import Job
from .registry import Registry
from .worker import Worker

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable", "ConfigError", "Job", "JobrunnerError", "JobTimeout", "PgEnqueuer",
    "Registry", "Retry", "SidekiqEnqueuer", "Supervisor", "Worker", "__version__",
]


def __getattr__(name):
    # The enqueuers and the supervisor import their drivers; load them on first use so that
    # `import jobrunner` stays cheap and works with only one driver installed.
    if name == "PgEnqueuer":
        from .backends.pgmq import PgEnqueuer
        return PgEnqueuer
    if name == "SidekiqEnqueuer":
        from .backends.sidekiq import SidekiqEnqueuer
        return SidekiqEnqueuer
    if name == "Supervisor":
        from .supervisor import Supervisor
        return Supervisor
    raise AttributeError(f"module 'jobrunner' has no attribute {name!r}")

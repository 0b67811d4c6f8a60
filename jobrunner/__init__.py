"""jobrunner: background jobs for Python web apps on Postgres (pgmq) or Redis (Sidekiq's format)."""

from typing import TYPE_CHECKING, Any

from jobrunner.errors import (BackendUnavailable, ConfigError, JobrunnerError, JobTimeout,
                              NotReplicated, Retry)
from jobrunner.job import Job
from jobrunner.registry import Registry
from jobrunner.worker import Worker
# The backend packages add themselves to the registry's table; no driver is imported here.
import jobrunner.backends  # noqa: E402,F401  isort:skip

if TYPE_CHECKING:
    # what __getattr__ loads on first use, named here for type checkers
    from jobrunner.backends.pgmq.enqueue import PgEnqueuer
    from jobrunner.backends.sidekiq.enqueue import SidekiqEnqueuer
    from jobrunner.ops.supervisor import Supervisor

from jobrunner.version import __version__  # noqa: E402  (re-exported)

__all__ = [
    "BackendUnavailable", "ConfigError", "Job", "JobrunnerError", "JobTimeout", "NotReplicated",
    "PgEnqueuer", "Registry", "Retry", "SidekiqEnqueuer", "Supervisor", "Worker", "__version__",
]


def __getattr__(name: str) -> Any:
    # The enqueuers and the supervisor import their drivers; load them on first use so that
    # `import jobrunner` stays cheap and works with only one driver installed.
    if name == "PgEnqueuer":
        from jobrunner.backends.pgmq.enqueue import PgEnqueuer
        return PgEnqueuer
    if name == "SidekiqEnqueuer":
        from jobrunner.backends.sidekiq.enqueue import SidekiqEnqueuer
        return SidekiqEnqueuer
    if name == "Supervisor":
        from jobrunner.ops.supervisor import Supervisor
        return Supervisor
    raise AttributeError(f"module 'jobrunner' has no attribute {name!r}")

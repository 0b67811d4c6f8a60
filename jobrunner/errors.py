"""The exceptions jobrunner raises, and the ones a job may raise to steer its own retry."""

from __future__ import annotations


class JobrunnerError(Exception):
    """Base class of every error jobrunner raises on its own."""


class ConfigError(JobrunnerError):
    """A worker, registry or setting is invalid; raised before anything runs."""


class BackendUnavailable(JobrunnerError):
    """A backend server does not answer or is not set up (for example pgmq missing)."""


class ServerUnreachable(BackendUnavailable):
    """The backend's server does not answer now: an outage a child waits out, retrying.

    ``retry_in``: seconds within which another try is worth making whatever the backoff (a
    standby answered and may be promoted any moment), else None.
    """

    def __init__(self, message: str, retry_in: float | None = None) -> None:
        super().__init__(message)
        self.retry_in = retry_in


class NotReplicated(JobrunnerError):
    """A durable enqueue (``SidekiqEnqueuer.durable``) reached the Redis master, but fewer
    replicas than asked confirmed it before the time-out.

    The jobs are on the master and will run, unless the master fails before they reach a
    replica: then they are lost. Enqueueing them again may run them twice. ``job_ids`` are
    the jobs' ids; ``acknowledged`` of ``wanted`` replicas confirmed them.
    """

    def __init__(self, message: str, job_ids: list[str], acknowledged: int, wanted: int):
        super().__init__(message)
        self.job_ids = job_ids
        self.acknowledged = acknowledged
        self.wanted = wanted


class Retry(Exception):
    """Raised by ``Worker.handle`` to run the job again later without counting it as an error.

    ``raise jobrunner.Retry(in_seconds=30)`` asks for another run in 30 seconds; without
    ``in_seconds`` the backend's usual backoff applies. The attempt still counts towards
    ``max_retries``, so a job cannot ask for retries forever.
    """

    def __init__(self, in_seconds: float | None = None, reason: str = "retry requested"):
        super().__init__(reason)
        self.in_seconds = in_seconds


class JobTimeout(Exception):
    """Raised inside ``handle`` when a job runs past its worker's ``timeout``."""


class ShutdownRequested(BaseException):
    """Raised inside a child when the supervisor stops it mid-job; the job is requeued unchanged.

    A BaseException so that a job's own ``except Exception`` does not swallow it.
    """

"""After a failed run: retry it later, bury it as dead, or discard it. One rule, every backend.

A child applies it when a job raises; a housekeeper applies it to a job whose child died
under it (that run counts as a failed attempt, so a job that kills its child ends dead
instead of killing children forever). Backends only carry the decision out.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Union

import attr

from jobrunner.job import Job
from jobrunner.retry import should_retry

if TYPE_CHECKING:
    from jobrunner.worker import Worker


@attr.s(frozen=True)
class RetryLater:
    """Run the job again in ``delay`` seconds."""

    delay: float = attr.ib()


@attr.s(frozen=True)
class Bury:
    """Keep the job where ``jobrunner dead`` shows it: out of retries, or it cannot run."""


@attr.s(frozen=True)
class Discard:
    """Drop the job: it is out of retries and its payload asks not to be kept (Sidekiq's
    ``dead: false``)."""


Decision = Union[RetryLater, Bury, Discard]


def retry_budget(job: Job, worker: type[Worker] | None) -> int | None:
    """Retries the job may have after its first failure: the payload's own budget (a Sidekiq
    ``retry: n``), else its worker's ``max_retries``; None when neither is known."""
    if job.max_retries is not None:
        return job.max_retries
    return worker.max_retries if worker is not None else None


def within_window(job: Job, now: float) -> bool:
    """True while the job's ``retry_for`` window, counted from its first failure (this one
    when it has none), is still open at ``now``. Sidekiq retires the job once
    ``failed_at + retry_for`` is before a clock read taken just after it set ``failed_at``, so
    a zero window is over at the first failure: here, once it is not after ``now``."""
    if job.retry_for is None:
        return True                     # no window: only the count decides
    started = job.first_failed_at if job.first_failed_at is not None else now
    return started + job.retry_for > now


def after_failure(job: Job, worker: type[Worker] | None, default_backoff: Callable[[int], float],
                  delay: float | None = None, now: float | None = None) -> Decision:
    """What to do with ``job`` after its run number ``job.attempt`` failed.

    ``worker``: its registered class, or None when unknown here (such a job is buried, never
    dropped). ``delay``: seconds the job itself asked for (``raise Retry(in_seconds=...)``);
    otherwise the worker's ``backoff``, else the backend's ``default_backoff``, each given the
    retry count (0 after the first failure). A job with a ``retry_for`` window is retried
    while the window is open at ``now`` (the time of this failure): instead of its count when
    ``job.window_only``, else as long as its count allows too.
    """
    if job.problem is not None:
        return Bury()
    budget = retry_budget(job, worker)
    again = budget is not None and should_retry(job.attempt, budget)
    if budget is not None and job.retry_for is not None:
        open_ = within_window(job, time.time() if now is None else now)
        again = open_ if job.window_only else again and open_
    if again:
        retry_count = job.attempt - 1
        if delay is None and worker is not None:
            delay = worker.backoff(retry_count)
        if delay is None:
            delay = default_backoff(retry_count)
        return RetryLater(delay)
    return Bury() if job.keep_dead else Discard()

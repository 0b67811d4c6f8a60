"""A scripted consumer for unit tests of the child loop: it hands out the jobs a test adds and
records what the child did with each one, without storing or moving anything."""

from __future__ import annotations

import collections
from typing import Any, Iterable

from jobrunner.job import ErrorInfo, Job
from jobrunner.retry import exponential_delay
from jobrunner.backends.base import Consumer, Wakeable


class MemoryConsumer(Consumer):
    """Serves jobs from a list and records every settlement in ``settled``.

    Unlike the store-backed ``StoreConsumer``, a settlement changes nothing: a requeued job
    is not handed out again, so a test sees exactly the fetches it scripted.
    """

    def __init__(self, jobs: Iterable[Job] = ()):
        self.waiting = collections.deque(jobs)
        self.settled: list[tuple[str, Job, Any]] = []    # (action, job, detail) in order

    def add(self, **fields: Any) -> Job:
        """A ``Job`` of these fields, served by a later fetch; returned as it will be fetched."""
        fields.setdefault("queue", "default")
        fields.setdefault("id", f"job-{len(self.waiting) + len(self.settled) + 1}")
        job = Job(**fields)
        self.waiting.append(job)
        return job

    def fetch(self, timeout: float, wake: Wakeable | None = None, limit: int = 1) -> list[Job]:
        return [self.waiting.popleft() for _ in range(min(limit, len(self.waiting)))]

    def ack(self, job: Job) -> None:
        self.settled.append(("ack", job, None))

    def retry(self, job: Job, delay: float, error: ErrorInfo) -> None:
        self.settled.append(("retry", job, (delay, error)))

    def bury(self, job: Job, error: ErrorInfo) -> None:
        self.settled.append(("bury", job, error))

    def discard(self, job: Job, error: ErrorInfo) -> None:
        self.settled.append(("discard", job, error))

    def requeue(self, job: Job) -> None:
        self.settled.append(("requeue", job, None))

    def default_backoff(self, retry_count: int) -> float:
        return exponential_delay(retry_count)

"""An in-memory backend for unit tests of the child loop; it records every settlement."""

import collections

from jobrunner.job import Job
from jobrunner.retry import exponential_delay
from jobrunner.backends.base import Backend, Consumer


class MemoryConsumer(Consumer):
    """Serves jobs from a list and records what the child did with each one."""

    def __init__(self, jobs=()):
        self.waiting = collections.deque(jobs)
        self.settled = []          # (action, job, detail) in order

    def add(self, **fields):
        fields.setdefault("queue", "default")
        fields.setdefault("id", f"job-{len(self.waiting) + len(self.settled) + 1}")
        job = Job(**fields)
        self.waiting.append(job)
        return job

    def fetch(self, timeout, wake=None, limit=1):
        return [self.waiting.popleft() for _ in range(min(limit, len(self.waiting)))]

    def ack(self, job):
        self.settled.append(("ack", job, None))

    def retry(self, job, delay, error):
        self.settled.append(("retry", job, (delay, error)))

    def bury(self, job, error):
        self.settled.append(("bury", job, error))

    def discard(self, job, error):
        self.settled.append(("discard", job, error))

    def requeue(self, job):
        self.settled.append(("requeue", job, None))

    def default_backoff(self, retry_count):
        return exponential_delay(retry_count)


class MemoryBackend(Backend):
    """Hands every child the same ``MemoryConsumer``."""

    name = "memory"

    def __init__(self, settings, registry, consumer=None):
        super().__init__(settings, registry)
        self.shared_consumer = consumer or MemoryConsumer()

    def consumer(self, queues, child_id, acks=None):
        return self.shared_consumer

"""The memory backend's consumer: fetch and settle jobs of a ``MemoryStore`` for one child."""

from __future__ import annotations

import select
from typing import Any, Sequence

from jobrunner.job import ErrorInfo, Job
from jobrunner.retry import exponential_delay
from jobrunner.backends.base import Consumer, Wakeable
from jobrunner.backends.memory.payload import job_of
from jobrunner.backends.paused import PausedQueues, wait_while_paused
from jobrunner.backends.queue_order import is_weighted, normalize_queues, queue_order
from jobrunner.backends.memory.store import MemoryStore, Receipt


def _readable(wake: Wakeable | None) -> bool:
    """True when the child's pipe has something to read (a stop, say)."""
    return wake is not None and bool(select.select([wake], [], [], 0)[0])


def error_record(error: ErrorInfo) -> dict:
    """What the store keeps of a failure (it adds the attempts and the time)."""
    return {"error_class": error.error_class, "error_message": error.message,
            "backtrace": error.stored_backtrace()}


class StoreConsumer(Consumer):
    """Leases jobs from the child's queues in the pool's order and settles each by its receipt.

    ``ack_later`` holds acks back until the next fetch, ``flush`` or ``close``, as the real
    backends do; until then the job stays leased, so recovery can still ack it.
    """

    def __init__(self, store: MemoryStore, queues: Sequence[str], child_id: str,
                 acks: Any = None, order: str = "strict"):
        self.store = store
        self.queues = list(queues)
        self.weighted = is_weighted(normalize_queues(self.queues), order)
        self.paused = PausedQueues(self.queues, lambda: set(store.paused))
        self.child_id = child_id
        self._acked: list[Receipt] = []   # receipts acked with ack_later, not written yet
        self.store.ack(list(acks or ()))  # what the child's previous consumer could not write

    def fetch(self, timeout: float, wake: Wakeable | None = None, limit: int = 1) -> list[Job]:
        """Up to ``limit`` jobs from the first queue that has any; waits at most ``timeout``
        seconds for one, returning early when ``wake`` (the child's pipe) is readable."""
        self.flush()
        queues = self.paused.serving()
        if not queues:
            wait_while_paused(timeout, wake)
            return []
        timeout = min(float(timeout), self.paused.next_check_in())   # a pause is seen in time
        if self.weighted:
            queues = queue_order(normalize_queues(queues), True)
        taken = self.store.take(queues, max(1, int(limit)), self.child_id,
                                max(0.0, timeout), lambda: _readable(wake))
        return [job_of(message) for message in taken]

    def ack(self, job: Job) -> None:
        self.store.ack([job.receipt])

    def ack_later(self, job: Job) -> None:
        self._acked.append(job.receipt)

    def retry(self, job: Job, delay: float, error: ErrorInfo) -> None:
        self.store.retry(job.receipt, delay, error_record(error))

    def bury(self, job: Job, error: ErrorInfo) -> None:
        self.store.bury(job.receipt, error_record(error))

    def discard(self, job: Job, error: ErrorInfo) -> None:
        self.store.discard(job.receipt)

    def requeue(self, job: Job) -> None:
        self.store.requeue([job.receipt])

    def requeue_many(self, jobs: Sequence[Job]) -> None:
        self.store.requeue([job.receipt for job in jobs])

    def default_backoff(self, retry_count: int) -> float:
        return exponential_delay(retry_count)

    def token(self, job: Job) -> dict[str, Any]:
        msg_id, lease = job.receipt
        return {"queue": job.queue, "msg_id": msg_id, "lease": lease}

    def flush(self) -> None:
        acked, self._acked = self._acked, []
        self.store.ack(acked)

    def take_unsent_acks(self) -> list[Receipt] | None:
        acked, self._acked = self._acked, []
        return acked or None

    def close(self) -> None:
        self.flush()

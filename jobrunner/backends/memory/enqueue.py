"""Enqueue on the memory backend: ``conn`` is the ``MemoryStore`` every role shares."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

from jobrunner.job import new_job_ids
from jobrunner.backends.base import Enqueuer
from jobrunner.backends.memory.payload import bodies
from jobrunner.backends.memory.store import NAME, MemoryStore

if TYPE_CHECKING:
    from jobrunner.worker import Worker


class MemoryEnqueuer(Enqueuer):
    """Writes jobs into a ``MemoryStore``: ``worker.enqueuer = MemoryEnqueuer``."""

    backend = NAME

    @classmethod
    def push(cls, worker: type[Worker], conn: MemoryStore, encoded_args: Sequence[str],
             at: float | None = None, carrier: Mapping[str, str] | None = None) -> list[str]:
        """Store one job per encoded args text, in order, visible now or at ``at``."""
        ids = new_job_ids(len(encoded_args))
        conn.push(worker.queue, bodies(worker.name, encoded_args, ids, carrier), at)
        return ids

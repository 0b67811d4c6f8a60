"""Enqueue on the memory backend: ``conn`` is the ``MemoryStore`` every role shares."""

from typing import List, Optional, Sequence

from jobrunner.job import new_job_ids
from jobrunner.backends.base import Enqueuer
from jobrunner.backends.memory.payload import bodies
from jobrunner.backends.memory.store import NAME, MemoryStore


class MemoryEnqueuer(Enqueuer):
    """Writes jobs into a ``MemoryStore``: ``worker.enqueuer = MemoryEnqueuer``."""

    backend = NAME

    @classmethod
    def push(cls, worker, conn: MemoryStore, encoded_args: Sequence[str],
             at: Optional[float] = None) -> List[str]:
        """Store one job per encoded args text, in order, visible now or at ``at``."""
        ids = new_job_ids(len(encoded_args))
        conn.push(worker.queue, bodies(worker.name, encoded_args, ids), at)
        return ids

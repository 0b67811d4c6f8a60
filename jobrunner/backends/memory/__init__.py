"""The memory backend: a reference implementation of every role, with jobs kept in memory.

``MemoryStore`` (``store.py``) is the "server" and the enqueuer's ``conn``; ``MemoryEnqueuer``,
``StoreConsumer``, ``MemoryHousekeeper`` and ``MemoryInspector`` work on it, and
``MemoryBackend`` makes them. It passes the same contract tests as pgmq and Sidekiq
(``tests/test_backend_contract.py``). ``MemoryConsumer`` (``scripted.py``) is something else:
a consumer that only records what the child loop does, for its unit tests.

Importing this package tells registries the backend's name, as the other backends do.
"""

from jobrunner import registry
from jobrunner.backends.memory.store import NAME, MemoryStore
from jobrunner.backends.memory.backend import MemoryBackend
from jobrunner.backends.memory.consumer import StoreConsumer
from jobrunner.backends.memory.enqueue import MemoryEnqueuer
from jobrunner.backends.memory.scripted import MemoryConsumer

__all__ = ["NAME", "MemoryBackend", "MemoryConsumer", "MemoryEnqueuer", "MemoryStore",
           "StoreConsumer"]


def check_queue_name(queue: str, worker_name: str = "queue") -> None:
    """Any queue name works in memory, so there is nothing to refuse."""


registry.add_backend(NAME, check_queue_name)

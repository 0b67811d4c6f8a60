"""The memory backend: every role over one shared ``MemoryStore``, no server and no driver."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from jobrunner.backends.base import Backend, Consumer
from jobrunner.backends.memory.consumer import StoreConsumer
from jobrunner.backends.memory.housekeeper import MemoryHousekeeper
from jobrunner.backends.memory.inspector import MemoryInspector
from jobrunner.backends.memory.store import NAME, MemoryStore

if TYPE_CHECKING:
    from jobrunner.config import Settings
    from jobrunner.registry import Registry


class MemoryBackend(Backend):
    """Makes consumers, the housekeeper and inspectors over ``store`` (a new one by default).

    ``consumer``: a consumer to hand every child instead, such as the scripted
    ``MemoryConsumer`` of the child-loop tests (kept as ``shared_consumer``).
    """

    name = NAME
    setting = ""                    # no server to name: the store is in this process
    connection_errors = ()          # a store cannot go away

    def __init__(self, settings: Settings, registry: Registry | None = None,
                 consumer: Consumer | None = None, store: MemoryStore | None = None):
        super().__init__(settings, registry)
        self.shared_consumer = consumer
        self.store = MemoryStore() if store is None else store

    def consumer(self, queues: Sequence[str], child_id: str, acks: Any = None) -> Consumer:
        if self.shared_consumer is not None:
            return self.shared_consumer
        if not queues:          # as the other backends: the settings', else every worker's
            # a consumer is made for a supervisor's child, and a supervisor has a registry
            queues = self.settings.queues or self.registry.queues(NAME)  # type: ignore[union-attr]
        return StoreConsumer(self.store, queues, child_id, acks=acks,
                             order=self.settings.queue_order)

    def housekeeper(self, identity: str) -> MemoryHousekeeper:
        return MemoryHousekeeper(self.store, identity, self.registry)

    def check(self) -> list[str]:
        return []

    def inspector(self, timeout: float = 5.0, purpose: str = "jobrunner-admin",
                  bounded: bool = False) -> MemoryInspector:
        return MemoryInspector(self.store)

"""The memory backend: every role over one shared ``MemoryStore``, no server and no driver."""

from typing import List, Optional, Sequence

from jobrunner.backends.base import Backend, Consumer
from jobrunner.backends.memory.consumer import StoreConsumer
from jobrunner.backends.memory.housekeeper import MemoryHousekeeper
from jobrunner.backends.memory.inspector import MemoryInspector
from jobrunner.backends.memory.store import NAME, MemoryStore


class MemoryBackend(Backend):
    """Makes consumers, the housekeeper and inspectors over ``store`` (a new one by default).

    ``consumer``: a consumer to hand every child instead, such as the scripted
    ``MemoryConsumer`` of the child-loop tests (kept as ``shared_consumer``).
    """

    name = NAME
    setting = ""                    # no server to name: the store is in this process
    connection_errors = ()          # a store cannot go away

    def __init__(self, settings, registry=None, consumer: Optional[Consumer] = None,
                 store: Optional[MemoryStore] = None):
        super().__init__(settings, registry)
        self.shared_consumer = consumer
        self.store = MemoryStore() if store is None else store

    def consumer(self, queues: Sequence[str], child_id: str, acks=None) -> Consumer:
        if self.shared_consumer is not None:
            return self.shared_consumer
        if not queues:          # as the other backends: the settings', else every worker's
            queues = self.settings.queues or self.registry.queues(NAME)
        return StoreConsumer(self.store, queues, child_id, acks=acks)

    def housekeeper(self, identity: str) -> MemoryHousekeeper:
        return MemoryHousekeeper(self.store, identity, self.registry)

    def check(self) -> List[str]:
        return []

    def inspector(self, timeout: float = 5.0, purpose: str = "jobrunner-admin",
                  bounded: bool = False) -> MemoryInspector:
        return MemoryInspector(self.store)

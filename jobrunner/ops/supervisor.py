"""The supervisor as users start it: the process layer's loop, serving the metrics endpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jobrunner.ops import metrics_server
from jobrunner.process import supervisor as process_supervisor
from jobrunner.process.exits import PoolBootError

if TYPE_CHECKING:
    from jobrunner.config import Settings
    from jobrunner.registry import Registry

__all__ = ["PoolBootError", "Supervisor"]


class Supervisor(process_supervisor.Supervisor):
    """``jobrunner.Supervisor``: runs pools for a registry, with ``/metrics`` when
    ``metrics_port`` is set. See ``jobrunner.process.supervisor`` for the loop itself."""

    def __init__(self, registry: Registry, settings: Settings | None = None, **kwargs: Any):
        super().__init__(registry, settings, metrics_server=metrics_server.from_settings,
                         **kwargs)

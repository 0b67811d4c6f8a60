"""The supervisor as users start it: the process layer's loop, serving the metrics endpoint."""

from jobrunner.ops import metrics_server
from jobrunner.process import supervisor as process_supervisor
from jobrunner.process.exits import PoolBootError

__all__ = ["PoolBootError", "Supervisor"]


class Supervisor(process_supervisor.Supervisor):
    """``jobrunner.Supervisor``: runs pools for a registry, with ``/metrics`` when
    ``metrics_port`` is set. See ``jobrunner.process.supervisor`` for the loop itself."""

    def __init__(self, registry, settings=None, **kwargs):
        super().__init__(registry, settings, metrics_server=metrics_server.from_settings,
                         **kwargs)

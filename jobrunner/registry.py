"""The registry: worker names to classes, the backends each runs on, and periodic entries."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, TypeVar

import attr

from jobrunner.errors import ConfigError
from jobrunner.job import encode_args

if TYPE_CHECKING:
    from jobrunner.worker import Worker

_W = TypeVar("_W", bound="type[Worker]")
_M = TypeVar("_M")

#: Backend name -> its queue-name check ``(queue, worker_name) -> None``, raising ConfigError.
#: Each backend package adds itself when imported (``jobrunner/__init__.py`` imports them all),
#: so that the registry checks names without knowing any backend.
BACKENDS: dict[str, Callable[[str, str], None]] = {}


def add_backend(name: str, check_queue_name: Callable[[str, str], None]) -> None:
    """Make backend ``name`` known to registries, with the rule its queue names follow."""
    BACKENDS[name] = check_queue_name


@attr.s(frozen=True, kw_only=True)
class Periodic:
    """One cron schedule: enqueue ``worker`` with ``args`` at every tick of ``cron``."""

    worker: type[Worker] = attr.ib()
    cron: str = attr.ib()
    args: Any = attr.ib(default=None)
    timezone: str = attr.ib(default="UTC")


class Registry:
    """Maps worker names to classes and says which backends serve them."""

    def __init__(self) -> None:
        self._workers: dict[str, type[Worker]] = {}        # name -> worker class
        self._backends: dict[str, tuple[str, ...]] = {}    # name -> tuple of backend names
        self.periodic: list[Periodic] = []
        self.middleware: list[object] = []                 # see jobrunner/middleware.py

    def register(self, worker: _W, backends: str | Iterable[str] | None = None) -> _W:
        """Register ``worker`` on its enqueuer's backend, or on each of ``backends``.

        Registering on both backends serves a worker's jobs from either, which is how jobs left
        in the old backend drain after a worker moves to the other one.
        """
        backends = self._backends_for(worker, backends)
        existing = self._workers.get(worker.name)
        if existing is not None and existing is not worker:
            raise ConfigError(
                f"two workers are named {worker.name!r}: {_qualname(existing)} and "
                f"{_qualname(worker)}; set a distinct `name` on one of them")
        for backend in backends:
            BACKENDS[backend](worker.queue, worker.name)
        self._workers[worker.name] = worker
        merged = self._backends.get(worker.name, ()) + backends
        self._backends[worker.name] = tuple(dict.fromkeys(merged))
        return worker

    def register_periodic(self, worker: type[Worker], cron: str, args: Any = None,
                          timezone: str | None = "UTC") -> Periodic:
        """Enqueue ``worker`` with ``args`` at each tick of ``cron`` (5 fields, or 6 with seconds)."""
        # croniter is only imported by users of periodic jobs
        from jobrunner.schedule import check_cron, schedule_key
        if self.lookup(getattr(worker, "name", None)) is not worker:
            self._backends_for(worker, None)   # a clear error for a non-worker, before its name
        check_cron(cron, worker.name, timezone)
        try:
            encode_args(worker.name, args)   # else every tick would fail, in a child, later
        except TypeError as exc:
            raise ConfigError(str(exc)) from None
        entry = Periodic(worker=worker, cron=cron, args=args, timezone=timezone or "UTC")
        # Duplicates are judged by the key the backends use: "*/5  * * * *" is "*/5 * * * *".
        key = schedule_key(worker.name, cron, args, entry.timezone)
        if any(schedule_key(e.worker.name, e.cron, e.args, e.timezone) == key
               for e in self.periodic):
            raise ConfigError(f"{worker.name}: the schedule {cron!r} with args {args!r} "
                              "is registered twice")
        if worker.name not in self._workers:
            self.register(worker)
        self.periodic.append(entry)
        return entry

    def add_middleware(self, middleware: _M) -> _M:
        """Run ``middleware`` around every job (its ``before``, ``after``, ``on_error``).

        See ``jobrunner/middleware.py`` for the order and the rules; returns ``middleware``.
        """
        from jobrunner.middleware import check_middleware
        self.middleware.append(check_middleware(middleware))
        return middleware

    def lookup(self, name: str | None) -> type[Worker] | None:
        """The worker class registered as ``name``, or None."""
        return self._workers.get(name)  # type: ignore[arg-type]  # None (no name) finds None

    def workers(self, backend: str | None = None) -> list[type[Worker]]:
        """Registered worker classes, all or those served on ``backend``."""
        return [w for name, w in self._workers.items()
                if backend is None or backend in self._backends[name]]

    def backends(self) -> list[str]:
        """The backends that have at least one registered worker, in a fixed order."""
        used = {b for names in self._backends.values() for b in names}
        return [b for b in BACKENDS if b in used]

    def queues(self, backend: str | None) -> list[str]:
        """The queues of the workers served on ``backend``, in registration order."""
        return list(dict.fromkeys(w.queue for w in self.workers(backend)))

    def _backends_for(self, worker: type[Worker], backends: Any) -> tuple[str, ...]:
        if not (isinstance(worker, type) and hasattr(worker, "handle")
                and isinstance(getattr(worker, "name", None), str)):
            raise ConfigError(f"register() needs a jobrunner.Worker subclass, got {worker!r}")
        if backends is None:
            if worker.enqueuer is None:
                raise ConfigError(f"{worker.name}: no enqueuer set; set one on the class or "
                                  "pass backends=(...) to register()")
            backends = (worker.enqueuer.backend,)
        if isinstance(backends, str):
            backends = (backends,)
        backends = tuple(backends)
        unknown = [b for b in backends if b not in BACKENDS]
        if unknown or not backends:
            raise ConfigError(f"{worker.name}: backends must be among {tuple(BACKENDS)}, "
                              f"got {backends!r}")
        return backends


def _qualname(cls):
    return f"{cls.__module__}.{cls.__qualname__}"

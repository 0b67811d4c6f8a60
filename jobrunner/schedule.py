"""Cron schedules without I/O: parse expressions, name schedules, and decide which ticks are due.

Each backend's scheduler (``backends/pgmq/schedules.py``, ``backends/sidekiq/schedules.py``) asks a
``Planner`` which ``(schedule, tick)`` pairs to claim on each housekeeper pass, then claims them
in the backend. A claim is idempotent per (schedule key, tick), so every supervisor may try every
tick: exactly one wins and enqueues the job.

Catch-up policy: a housekeeper that has just started (or reconnected, or whose previous pass is
more than ``LATE_GRACE`` seconds old) claims only the *latest* tick at or before now, and only if
that tick lies within ``CATCH_UP_WINDOW`` and after the schedule was first seen by any supervisor.
So after downtime a missed tick runs once, not once per missed tick, and a newly deployed
schedule does not fire for a tick from before it existed. Between regular passes every tick in
(previous pass, now] is claimed.

Cleanup policy: claims are kept ``CLAIM_RETENTION`` seconds, longer than any tick a planner can
still ask about (``CATCH_UP_WINDOW`` plus margin for clock skew), so pruning never reopens a tick
(good_job#767). Schedule metadata, refreshed by live supervisors every ``REFRESH_INTERVAL``, is
deleted once no supervisor has refreshed it for ``STALE_GRACE``; a schedule removed from the code
has no code enqueuing it, so it stops at once and its listing disappears after the grace.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any, Collection, Iterable, Mapping, Protocol, Sequence

import attr

from jobrunner.errors import ConfigError

if TYPE_CHECKING:
    from jobrunner.worker import Worker

log = logging.getLogger("jobrunner.periodic")

#: A missed tick younger than this still runs once after downtime.
CATCH_UP_WINDOW = 3600.0
#: A pass this soon after the previous one claims every tick in between (housekeeper jitter).
LATE_GRACE = 5.0
#: Claims older than this are pruned; it must exceed CATCH_UP_WINDOW (plus clock skew).
CLAIM_RETENTION = CATCH_UP_WINDOW + 900.0
#: Seconds between refreshes of a supervisor's schedule metadata (and pruning).
REFRESH_INTERVAL = 30.0
#: Schedules no live supervisor refreshed for this long are removed from the listing.
STALE_GRACE = 600.0
#: Upper bound on ticks claimed per schedule and pass, whatever the cron says.
MAX_TICKS_PER_PASS = 100


def _croniter():
    try:
        import croniter
    except ImportError:
        raise ConfigError("periodic jobs need croniter: pip install 'jobrunner[cron]'") from None
    return croniter.croniter


def _zone(timezone):
    if timezone in (None, "UTC"):
        return datetime.timezone.utc
    from zoneinfo import ZoneInfo
    return ZoneInfo(timezone)


class PeriodicEntry(Protocol):
    """A ``registry.Periodic`` as this module reads it. The registry imports this module, so
    this one names the registry's types by their shape instead of importing them back."""

    @property
    def worker(self) -> type[Worker]: ...

    @property
    def cron(self) -> str: ...

    @property
    def args(self) -> Any: ...

    @property
    def timezone(self) -> str | None: ...


class WorkerCatalogue(Protocol):
    """A ``registry.Registry`` as this module reads it (see ``PeriodicEntry``)."""

    @property
    def periodic(self) -> Sequence[PeriodicEntry]: ...

    def backends(self) -> list[str]: ...

    def workers(self, backend: str | None = None) -> list[type[Worker]]: ...


def to_croniter(cron: str) -> str:
    """croniter wants seconds as a trailing 6th field; Roadster writes them first."""
    fields = cron.split()
    if len(fields) == 6:
        return " ".join(fields[1:] + fields[:1])
    return " ".join(fields)


def check_cron(cron: str, worker_name: str, timezone: str | None = "UTC") -> None:
    """Raise ConfigError naming the worker unless ``cron`` is a valid expression."""
    if not isinstance(cron, str) or len(cron.split()) not in (5, 6):
        raise ConfigError(f"{worker_name}: cron must have 5 fields, or 6 with leading "
                          f"seconds; got {cron!r}")
    try:
        _zone(timezone)
    except Exception:
        raise ConfigError(f"{worker_name}: unknown time zone {timezone!r}") from None
    if not _croniter().is_valid(to_croniter(cron)):
        raise ConfigError(f"{worker_name}: invalid cron expression {cron!r}")
    try:
        next_tick(cron, datetime.datetime.now(datetime.timezone.utc), timezone)
    except Exception:      # croniter's CroniterBadDateError: no such date, e.g. 30 February
        raise ConfigError(f"{worker_name}: the cron expression {cron!r} never fires "
                          "(it names no date that exists)") from None


# -- ticks --------------------------------------------------------------------------------

def _aware(epoch, timezone):
    return datetime.datetime.fromtimestamp(epoch, _zone(timezone))


def next_tick(cron: str, after: datetime.datetime,
              timezone: str | None = "UTC") -> datetime.datetime:
    """The first tick of ``cron`` strictly after the aware datetime ``after``."""
    start = after.astimezone(_zone(timezone))
    return _croniter()(to_croniter(cron), start).get_next(datetime.datetime)


def _next_epoch(cron, after, timezone):
    return next_tick(cron, _aware(after, timezone), timezone).timestamp()


def latest_tick(cron: str, at: float, timezone: str | None = "UTC") -> float:
    """The last tick at or before the epoch time ``at``, as epoch seconds."""
    # croniter's get_prev is strict on an exact tick, so step back then forward once.
    previous = _croniter()(to_croniter(cron), _aware(at, timezone)).get_prev(datetime.datetime)
    following = _next_epoch(cron, previous.timestamp(), timezone)
    return following if following <= at else previous.timestamp()


def ticks_between(cron: str, after: float, until: float, timezone: str | None = "UTC",
                  limit: int = MAX_TICKS_PER_PASS) -> list[float]:
    """Ticks in (after, until] as epoch seconds, oldest first; at most ``limit`` of the newest."""
    ticks = []
    tick = _next_epoch(cron, after, timezone)
    while tick <= until:
        ticks.append(tick)
        tick = _next_epoch(cron, tick, timezone)
    return ticks[-limit:]


def due_ticks(cron: str, timezone: str | None, since: float | None, now: float,
              first_seen: float | None = None, grace: float = LATE_GRACE,
              window: float = CATCH_UP_WINDOW) -> list[float]:
    """The ticks to claim at ``now`` (epoch seconds), given the previous pass at ``since``.

    ``since`` is None on a housekeeper's first pass. ``first_seen`` is when any supervisor
    first registered this schedule in the backend (None if unknown). See the module docstring.
    """
    if since is not None and 0 <= now - since <= grace:
        return ticks_between(cron, since, now, timezone)
    floor = now - window
    if since is not None:
        floor = max(floor, since)
    if first_seen is not None:
        floor = max(floor, first_seen)
    tick = latest_tick(cron, now, timezone)
    return [tick] if tick > floor else []


# -- schedules ----------------------------------------------------------------------------

def canonical_json(value: Any) -> str:
    """JSON text that is the same for equal values whatever the dict order."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def schedule_key(worker_name: str, cron: str, args: Any, timezone: str | None = "UTC") -> str:
    """A stable name for one schedule: the same in every process, host and Python version."""
    text = canonical_json([worker_name, " ".join(cron.split()), args, timezone or "UTC"])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


@attr.s(frozen=True, kw_only=True)
class Schedule:
    """One registered periodic entry, with its key and the backend that fires it."""

    key: str = attr.ib()
    worker: type[Worker] = attr.ib(eq=False)
    cron: str = attr.ib()
    args: Any = attr.ib(eq=False)
    timezone: str = attr.ib()

    @classmethod
    def from_entry(cls, entry: PeriodicEntry) -> Schedule:
        """A ``Schedule`` from a ``registry.Periodic`` entry."""
        timezone = entry.timezone or "UTC"
        return cls(key=schedule_key(entry.worker.name, entry.cron, entry.args, timezone),
                   worker=entry.worker, cron=entry.cron, args=entry.args, timezone=timezone)

    def describe(self) -> dict[str, Any]:
        """The fields kept in the backend for listings (``jobrunner stats``) and for sending the
        schedule's job without its class (the dashboard's "enqueue now")."""
        return {"worker": self.worker.name, "cron": self.cron, "args": self.args,
                "timezone": self.timezone, "queue": self.worker.queue,
                "retry": self.worker.max_retries}


@attr.s(frozen=True, kw_only=True)
class StoredWorker:
    """What an enqueuer reads of a Worker class, from a stored schedule: an operator's process
    (the dashboard) sends a schedule's job without importing the project's code."""

    name: str = attr.ib()
    queue: str = attr.ib()
    #: None: the push writes no retry count of its own (a stub of a Ruby class, on Redis)
    max_retries: int | None = attr.ib(default=None)

    @classmethod
    def of(cls, described: dict[str, Any]) -> StoredWorker | None:
        """The worker of a stored ``Schedule.describe()``; None when it names no queue (stored
        by a version that did not record it)."""
        queue = described.get("queue")
        if not isinstance(queue, str) or not queue:
            return None
        retry = described.get("retry")
        retry = retry if isinstance(retry, int) and not isinstance(retry, bool) else None
        return cls(name=str(described.get("worker")), queue=queue, max_retries=retry)


def backend_for(registry: WorkerCatalogue, worker: type[Worker]) -> str | None:
    """The one backend that fires ``worker``'s schedules, or None.

    Its enqueuer's backend when the worker is served there, else the first backend serving it:
    firing on every backend of a worker registered on two (a migration) would run it twice.
    """
    served = [b for b in registry.backends() if worker in registry.workers(b)]
    preferred = worker.enqueuer.backend if worker.enqueuer is not None else None
    if preferred in served:
        return preferred
    return served[0] if served else None


def schedules_for(registry: WorkerCatalogue | None, backend: str) -> list[Schedule]:
    """The schedules of ``registry`` that ``backend`` fires."""
    if registry is None:
        return []
    return [Schedule.from_entry(entry) for entry in registry.periodic
            if backend_for(registry, entry.worker) == backend]


def next_run(cron: str, timezone: str | None, now: float) -> datetime.datetime | None:
    """The next tick after epoch ``now`` as an aware UTC datetime (None if cron is unusable)."""
    try:
        tick = _next_epoch(cron, now, timezone)
    except Exception:   # a listing must not fail on one odd row or a missing croniter
        return None
    return datetime.datetime.fromtimestamp(tick, datetime.timezone.utc)


class Planner:
    """Decides, pass after pass, which (schedule, tick) pairs one housekeeper claims."""

    def __init__(self, schedules: Iterable[Schedule], grace: float = LATE_GRACE,
                 window: float = CATCH_UP_WINDOW, refresh_interval: float = REFRESH_INTERVAL):
        self.schedules = list(schedules)
        self.grace = grace
        self.window = window
        self.refresh_interval = refresh_interval
        self.since: dict[str, float] = {}       # key -> epoch time of its last completed pass
        self.first_seen: dict[str, float] = {}  # key -> epoch time, learned from the backend
        self._next_refresh: float | None = None
        self.broken: dict[str, str] = {}        # key -> why its ticks cannot be computed

    def refresh_due(self, now: float) -> bool:
        """True when the scheduler should refresh metadata and prune (then call ``refreshed``)."""
        return self._next_refresh is None or now >= self._next_refresh

    def refreshed(self, now: float, first_seen: Mapping[str, float]) -> None:
        """Record a refresh at ``now`` and the backend's ``{key: first seen epoch}``."""
        self.first_seen.update(first_seen)
        self._next_refresh = now + self.refresh_interval

    def due(self, now: float) -> list[tuple[Schedule, float]]:
        """The (schedule, tick) pairs to claim at ``now``, oldest tick first per schedule.

        A schedule whose ticks cannot be computed is skipped and said once (``broken``): one
        bad schedule must never stop the others from firing.
        """
        pairs = []
        for schedule in self.schedules:
            try:
                ticks = due_ticks(schedule.cron, schedule.timezone,
                                  self.since.get(schedule.key), now,
                                  self.first_seen.get(schedule.key), self.grace, self.window)
            except Exception as exc:
                if schedule.key not in self.broken:
                    self.broken[schedule.key] = f"{type(exc).__name__}: {exc}"
                    log.error("periodic %s (%s): cannot compute its ticks, skipped: %s",
                              schedule.worker.name, schedule.cron, self.broken[schedule.key])
                continue
            pairs += [(schedule, tick) for tick in ticks]
        return pairs

    def passed(self, now: float, failed: Collection[str] = ()) -> None:
        """The pairs ``due(now)`` returned are claimed (by us or another supervisor), except
        those of the schedule keys in ``failed``: their ticks are asked for again next pass."""
        for schedule in self.schedules:
            if schedule.key not in failed:
                self.since[schedule.key] = now

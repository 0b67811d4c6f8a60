"""The Worker base class: a user's job, its options, and the classmethods that enqueue it."""

from __future__ import annotations

import datetime
import numbers
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Protocol, Sequence

from jobrunner.errors import ConfigError
from jobrunner.job import encode_args

if TYPE_CHECKING:
    from jobrunner.job import ErrorInfo, Job

ACTIONS = ("delete", "archive")


class EnqueuerClass(Protocol):
    """What ``Worker.enqueuer`` holds: an ``Enqueuer`` subclass (``jobrunner.backends.base``),
    such as ``jobrunner.PgEnqueuer``. Named by its shape, as the model imports no backend."""

    @property
    def backend(self) -> str | None: ...

    def push(self, worker: type[Worker], conn: Any, encoded_args: Sequence[str],
             at: float | None = None, carrier: Mapping[str, str] | None = None) -> list[str]: ...


#: While a test fakes enqueueing (``jobrunner.testing``), the enqueuer every worker uses.
enqueuer_override: EnqueuerClass | None = None

#: ``around(worker, count, push) -> ids``, set by ``jobrunner.contrib.opentelemetry``: wraps
#: each enqueue, calling ``push(carrier)`` once with the trace context the jobs carry. None
#: (tracing off) costs each enqueue one check.
around_enqueue: Callable[[type[Worker], int, Callable[[Mapping[str, str] | None], list[str]]],
                         list[str]] | None = None


def _push(worker: type[Worker], conn: Any, encoded: Sequence[str],
          at: float | None = None) -> list[str]:
    enqueuer = worker._enqueuer()
    if around_enqueue is None:
        return enqueuer.push(worker, conn, encoded, at)
    return around_enqueue(worker, len(encoded),
                          lambda carrier: enqueuer.push(worker, conn, encoded, at, carrier))


class Worker:
    """Subclass this, set ``enqueuer``, and write ``handle(self, args)``.

    One instance is made per child process after the fork, so ``__init__`` may open resources
    (a database pool, an HTTP session) that the child then reuses for every job.

    Class options:
        name: the name on the wire and in the registry; the class name when not set.
        enqueuer: ``jobrunner.PgEnqueuer`` or ``jobrunner.SidekiqEnqueuer``.
        queue: the queue jobs go to; ``"default"``.
        max_retries: retries after the first failure (so up to ``max_retries + 1`` runs); 25.
        timeout: seconds one run may take before it fails with ``JobTimeout``; 60. None: no limit.
        backtrace: how much of a failed run's traceback is stored with the job: True (all of
            it, the default), a number of lines (the last ones, nearest the raise), or False.
            A Sidekiq payload's own ``backtrace`` option, set by a Ruby class, wins.
        success_action / failure_action: pgmq only, ``"delete"`` or ``"archive"`` — what becomes
            of the message after a success, and after the last failure (default: delete, archive).
    """

    # None on this base class only: ``__init_subclass__`` gives every subclass a str.
    name: str = None  # type: ignore[assignment]
    enqueuer: EnqueuerClass | None = None
    queue: str = "default"
    max_retries: int = 25
    timeout: float | None = 60.0
    backtrace: bool | int = True
    success_action: str = "delete"
    failure_action: str = "archive"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = cls.__dict__.get("name") or cls.__name__
        _check_options(cls)

    def handle(self, args: Any) -> object:
        """Do the job's work. Raise to fail (it is retried); return to succeed."""
        raise NotImplementedError(f"{type(self).__name__}.handle(self, args) is not written")

    @classmethod
    def backoff(cls, retry_count: int) -> float | None:
        """Seconds to wait before retry number ``retry_count + 1``; None uses the backend's policy."""
        return None

    def retries_exhausted(self, job: Job, error: ErrorInfo) -> None:
        """Called once when a job has failed for the last time, before it goes dead."""

    # -- enqueueing, from web code --------------------------------------------------------

    @classmethod
    def enqueue(cls, conn: Any, args: Any = None) -> str:
        """Enqueue one job to run as soon as a child is free; returns its id."""
        return _push(cls, conn, [encode_args(cls.name, args)])[0]

    @classmethod
    def enqueue_in(cls, conn: Any, delay: float | datetime.timedelta, args: Any = None) -> str:
        """Enqueue one job to run after ``delay`` (seconds or ``datetime.timedelta``)."""
        if isinstance(delay, datetime.timedelta):
            delay = delay.total_seconds()
        if not isinstance(delay, numbers.Real) or isinstance(delay, bool):
            raise TypeError(f"{cls.name}: delay must be seconds or a timedelta, got {delay!r}")
        encoded = encode_args(cls.name, args)
        return _push(cls, conn, [encoded], at=time.time() + float(delay))[0]

    @classmethod
    def enqueue_at(cls, conn: Any, when: datetime.datetime, args: Any = None) -> str:
        """Enqueue one job to run at ``when``, a timezone-aware ``datetime``."""
        if not isinstance(when, datetime.datetime) or when.utcoffset() is None:
            raise TypeError(f"{cls.name}: enqueue_at needs a timezone-aware datetime, got {when!r}")
        encoded = encode_args(cls.name, args)
        return _push(cls, conn, [encoded], at=when.timestamp())[0]

    @classmethod
    def enqueue_batch(cls, conn: Any, args_list: Iterable[Any]) -> list[str]:
        """Enqueue many jobs in one round trip; returns their ids in order."""
        if isinstance(args_list, (str, bytes, dict)) or not hasattr(args_list, "__iter__"):
            raise TypeError(f"{cls.name}: enqueue_batch needs a list of args, got {args_list!r}")
        encoded = [encode_args(cls.name, args) for args in args_list]
        if not encoded:
            return []
        return _push(cls, conn, encoded)

    @classmethod
    def _enqueuer(cls) -> EnqueuerClass:
        if cls.enqueuer is None:
            raise ConfigError(f"{cls.name}: set enqueuer = jobrunner.PgEnqueuer or "
                              "jobrunner.SidekiqEnqueuer on the class")
        return cls.enqueuer if enqueuer_override is None else enqueuer_override


def _check_options(cls):
    """Refuse bad class options when the class is defined, not when its first job runs."""
    where = f"worker {cls.__qualname__}"
    if not isinstance(cls.name, str) or not cls.name:
        raise ConfigError(f"{where}: name must be a non-empty string, got {cls.name!r}")
    if not isinstance(cls.queue, str) or not cls.queue:
        raise ConfigError(f"{where}: queue must be a non-empty string, got {cls.queue!r}")
    if isinstance(cls.max_retries, bool) or not isinstance(cls.max_retries, int) \
            or cls.max_retries < 0:
        raise ConfigError(f"{where}: max_retries must be an int >= 0, got {cls.max_retries!r}")
    if cls.timeout is not None and (isinstance(cls.timeout, bool)
                                    or not isinstance(cls.timeout, numbers.Real)
                                    or cls.timeout <= 0):
        raise ConfigError(f"{where}: timeout must be seconds > 0 or None, got {cls.timeout!r}")
    if not isinstance(cls.backtrace, int) or cls.backtrace < 0:
        raise ConfigError(f"{where}: backtrace must be True, False or a number of lines >= 0, "
                          f"got {cls.backtrace!r}")
    for option in ("success_action", "failure_action"):
        if getattr(cls, option) not in ACTIONS:
            raise ConfigError(f"{where}: {option} must be one of {ACTIONS}, "
                              f"got {getattr(cls, option)!r}")

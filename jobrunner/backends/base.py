"""The small interface a backend implements: an enqueuer, a consumer per child, a housekeeper.

A backend object is made in the supervisor but opens no connection there: ``consumer()`` and
``housekeeper()`` are called inside forked children, which then own their connection. The
supervisor itself never talks to a backend.

Roles:
    Enqueuer     classmethods called from web code on the caller's own connection.
    Consumer     one per child: fetch jobs, then settle each one (ack, retry, bury, requeue).
    Housekeeper  one per backend and supervisor, in its own child: heartbeat, due scheduled and
                 retry jobs, lease upkeep, recovery of jobs whose child died, periodic ticks.
    Inspector    what operators see and do (``jobrunner stats``, ``dead``, ``check``, the
                 dashboard, the metrics reader), over a connection of its own; results are
                 plain dicts (``backends/inspector.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Protocol, Sequence

from jobrunner.backends.inspector import Inspector

if TYPE_CHECKING:
    from jobrunner.config import Settings
    from jobrunner.job import ErrorInfo, Job
    from jobrunner.registry import Registry
    from jobrunner.worker import Worker


class Wakeable(Protocol):
    """What ``Consumer.fetch`` may wait on besides the server: the child's pipe."""

    def fileno(self) -> int: ...


class SupervisorSnapshot(Protocol):
    """What ``Housekeeper.tick`` is given: ``jobrunner.process.state.SupervisorState``, named
    by its fields because the backends import nothing from the process layer."""

    @property
    def identity(self) -> str: ...        # "<hostname>:<pid>:<12 hex>"

    @property
    def hostname(self) -> str: ...

    @property
    def pid(self) -> int: ...

    @property
    def started_at(self) -> float: ...    # epoch seconds

    @property
    def queues(self) -> Sequence[str]: ...  # served on this housekeeper's backend

    @property
    def concurrency(self) -> int: ...     # children in the backend's pools

    @property
    def quiet(self) -> bool: ...

    @property
    def busy(self) -> Sequence[Any]: ...  # RunningJob: child_id, job_id, worker, queue, ...

    @property
    def children(self) -> Sequence[str]: ...  # child_id of every live child of the backend

    @property
    def tag(self) -> str: ...

    # minute epoch -> (processed, failed): the runs this supervisor settled on the backend in
    # each of its recent minutes, totals so far (not increments). ``tick`` stores them as this
    # supervisor's values for those minutes (a value never goes down), which
    # ``Inspector.history`` sums over supervisors: a snapshot missed or written twice changes
    # nothing.
    @property
    def settled(self) -> Mapping[int, tuple[int, int]]: ...


class Enqueuer:
    """Writes jobs in the backend's wire format. Subclasses set ``backend`` and ``push``."""

    backend: ClassVar[str | None] = None

    @classmethod
    def push(cls, worker: type[Worker], conn: Any, encoded_args: Sequence[str],
             at: float | None = None, carrier: Mapping[str, str] | None = None) -> list[str]:
        """Write one job per element of ``encoded_args`` in one round trip; return their ids.

        Each element is one job's args as compact JSON text (``jobrunner.job.encode_args``),
        already checked, so a payload is built around it without encoding it again. ``at`` is
        an epoch time in seconds for delayed jobs, None to run as soon as possible.
        ``carrier``: a trace context each job carries in a ``TRACE_FIELD`` (``job.py``), read
        back as ``Job.trace_context``; None writes no such field.
        """
        raise NotImplementedError


class Consumer:
    """Fetches and settles jobs for one child over one connection.

    Every fetched job must be settled exactly once by ``ack``, ``retry``, ``bury``,
    ``discard`` or ``requeue``; until then the backend keeps it recoverable (pgmq's
    visibility timeout, the child's in-flight list on Redis).
    """

    def fetch(self, timeout: float, wake: Wakeable | None = None, limit: int = 1) -> list[Job]:
        """Return up to ``limit`` ``Job`` (possibly none), blocking at most ``timeout`` seconds.

        ``wake``: an object with ``fileno()`` (the child's pipe); a consumer that can wait on
        it returns early when it becomes readable, so a stop is noticed at once.

        A payload that cannot run comes back as a ``Job`` with ``problem`` set, never raises.
        """
        raise NotImplementedError

    def ack(self, job: Job) -> None:
        """The job succeeded: remove it."""
        raise NotImplementedError

    def ack_later(self, job: Job) -> None:
        """``ack``, which a consumer may hold back and send with its next fetch or ``flush``.

        The job stays recoverable until then, so a crash in between may run it again.
        """
        self.ack(job)

    def retry(self, job: Job, delay: float, error: ErrorInfo) -> None:
        """The job failed and runs again in ``delay`` seconds. ``error`` is an ``ErrorInfo``."""
        raise NotImplementedError

    def bury(self, job: Job, error: ErrorInfo) -> None:
        """The job failed for good (or cannot run): keep it where `jobrunner dead` shows it."""
        raise NotImplementedError

    def discard(self, job: Job, error: ErrorInfo) -> None:
        """The job failed and its own payload asks not to keep it (Sidekiq ``retry: false``)."""
        self.bury(job, error)

    def requeue(self, job: Job) -> None:
        """Put the job back unchanged, to run next (shutdown while it waited or ran)."""
        raise NotImplementedError

    def requeue_many(self, jobs: Sequence[Job]) -> None:
        """``requeue`` each of ``jobs``, fetched together, so that they keep their order."""
        for job in jobs:
            self.requeue(job)

    def default_backoff(self, retry_count: int) -> float:
        """Seconds before the next run after a failure; ``retry_count`` is 0 after the first."""
        raise NotImplementedError

    def token(self, job: Job) -> Any:
        """A small JSON value that lets the housekeeper recover ``job`` if this child dies."""
        return None

    def flush(self) -> None:
        """Write anything kept back for batching (counters); called when the child is idle."""

    def take_unsent_acks(self) -> Any:
        """The acks held back and not yet written, taken out of this consumer: an opaque
        value, or None when there are none. After a lost connection the child hands them to its next
        consumer (``Backend.consumer(..., acks=...)``), which writes them first; acks are
        guarded, so a job settled otherwise since is left alone."""
        return None

    def close(self) -> None:
        """Flush and close the connection."""


class Housekeeper:
    """Backend upkeep for one supervisor, run in its own child."""

    def tick(self, state: SupervisorSnapshot) -> list[str]:
        """Do the periodic duties; ``state`` is a ``SupervisorState`` snapshot.

        Returns the names of signals asked for remotely (e.g. ``["TSTP"]``), usually none.
        """
        return []

    def record_counts(self, state: SupervisorSnapshot) -> None:
        """Write the snapshot's run counts, as ``tick`` does (the per-minute history, and the
        per-class metrics where the backend keeps them). The housekeeper calls it alone with
        the supervisor's last snapshot, once its children are gone, so that a clean stop
        keeps the runs of its last second."""

    def recover(self, child_id: str, tokens: Sequence[Any], crashed: bool,
                reason: str | None = None, held: Sequence[Any] = (),
                finished: Sequence[Mapping[str, Any]] = ()) -> None:
        """Put back the jobs that child ``child_id`` held when it stopped.

        ``tokens`` are the values ``Consumer.token`` gave for its running jobs: the only ones
        a crash may charge. ``crashed`` is True when the child died or was killed for a
        timeout or silence (the running job's run counts as a failed attempt) and False when
        the supervisor stopped it for shutdown (requeue unchanged). Whatever else the child
        held goes back unchanged, whether or not it is listed in ``held``: a job a fetch
        handed over after the child stopped reading never began.
        ``reason`` says why a crashed child stopped ("timeout", "heartbeat", "died"); see
        ``job.crash_error``. ``held`` are the tokens of jobs it had fetched but not started:
        they go back unchanged, never counted as an attempt. ``finished`` lists the jobs that
        succeeded (``{"token", "worker"}``) but whose ack the child may have held for its next
        fetch: they are acked, not run again. Every step is guarded, so a job already settled
        is left alone.
        """

    def close(self) -> None:
        """Remove this supervisor's heartbeat and close the connection."""


class Backend:
    """Factory for a backend's consumers, housekeeper and inspector, configured by ``Settings``."""

    name: str = ""
    #: The ``Settings`` field that names this backend's server: an operator command uses the
    #: backend when that setting is given, or when its default server answers.
    setting: str = ""
    #: Driver exceptions that mean "the connection is gone": a child reconnects with backoff.
    connection_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, settings: Settings, registry: Registry | None = None):
        self.settings = settings
        self.registry = registry

    def consumer(self, queues: Sequence[str], child_id: str, acks: Any = None) -> Consumer:
        """A ``Consumer`` over a new connection, for a child serving ``queues`` in order;
        ``acks``: what the child's previous consumer could not write (``take_unsent_acks``)."""
        raise NotImplementedError

    def housekeeper(self, identity: str) -> Housekeeper:
        """A ``Housekeeper`` over a new connection, for the supervisor named ``identity``."""
        raise NotImplementedError

    def check(self) -> list[str]:
        """Connect once and raise ``BackendUnavailable`` with the reason if unusable.

        Returns a list of warning strings (settings that risk losing jobs, old versions).
        """
        return []

    def install(self) -> str:
        """Set up what the backend needs on its server (idempotent); says what was done."""
        return f"{self.name}: nothing to install"

    def inspector(self, timeout: float = 5.0, purpose: str = "jobrunner-admin",
                  bounded: bool = False) -> Inspector:
        """An ``Inspector`` over a new connection; raises ``BackendUnavailable`` with the reason
        when the server does not answer within ``timeout`` seconds or is not set up.

        ``purpose`` names the connection where the server shows names; ``bounded``: every
        query must also answer within ``timeout`` (the metrics reader: a scrape never waits on
        a slow query)."""
        raise NotImplementedError

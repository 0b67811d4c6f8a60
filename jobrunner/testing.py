"""Test helpers for apps that use jobrunner: record enqueues and run the jobs, with no server.

In a test, ``with jobrunner.testing.fake() as jobs:`` makes every ``Worker.enqueue*`` record the
job instead of writing it, after the same checks as in production (a worker with no enqueuer,
args that are not JSON: the same errors). ``jobs.enqueued(Worker)`` lists what was enqueued;
``jobs.drain()`` runs everything in this process — the jobs those jobs enqueue too — with
retries as in production (the same retry budget, ``Retry`` and ``retries_exhausted``; backoff
delays are not waited for). ``with jobrunner.testing.inline():`` runs each job when it is
enqueued. Under pytest the ``jobrunner_jobs`` fixture is a ``fake()`` for one test (the package
registers this module as a pytest plugin). See docs/testing.md.

What it does not do: enforce ``timeout`` (no alarm in the test process), fork, or talk to a
backend; a test of the backends themselves belongs against real servers.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import attr

from jobrunner import worker as worker_module
from jobrunner.errors import Retry
from jobrunner.job import ErrorInfo, Job, Outcome, new_job_ids
from jobrunner.lifecycle import Bury, RetryLater, after_failure
from jobrunner.middleware import MiddlewareChain
from jobrunner.retry import exponential_delay

if TYPE_CHECKING:
    from jobrunner.registry import Registry
    from jobrunner.worker import Worker

#: Runs ``drain`` makes before it gives up on jobs that keep enqueueing jobs.
MAX_RUNS = 10_000


@attr.s(kw_only=True, slots=True)
class Enqueued:
    """One job as a test's code enqueued it."""

    worker: type[Worker] = attr.ib()
    queue: str = attr.ib()
    args: Any = attr.ib()              # as the job will see them (decoded from the wire JSON)
    id: str = attr.ib()
    enqueued_at: float = attr.ib()
    at: float | None = attr.ib(default=None)     # epoch seconds, for enqueue_in / enqueue_at
    trace_context: dict[str, str] | None = attr.ib(default=None)   # carried for tracing

    @property
    def delay(self) -> float | None:
        """Seconds between the enqueue and the time the job asked to run, or None."""
        return None if self.at is None else max(0.0, self.at - self.enqueued_at)


@attr.s(kw_only=True, slots=True)
class Run:
    """One run of a job by ``drain`` or ``inline``: which attempt, and what came of it."""

    job: Enqueued = attr.ib()
    attempt: int = attr.ib()
    outcome: Outcome = attr.ib()
    error: ErrorInfo | None = attr.ib(default=None)
    exception: BaseException | None = attr.ib(default=None, repr=False)


class FakeJobs:
    """The jobs enqueued during a ``fake()`` block, and the runs ``drain`` made of them.

    It is also the enqueuer every worker uses meanwhile (``push``), whatever its backend."""

    backend = None

    def __init__(self, registry: Registry | None = None, run_inline: bool = False,
                 raise_errors: bool = True):
        self.waiting: list[Enqueued] = []
        self.all: list[Enqueued] = []
        self.runs: list[Run] = []
        self.instances: dict[type[Worker], Worker] = {}
        self.middleware = MiddlewareChain(registry.middleware if registry else ())
        self.run_inline = run_inline
        self.raise_errors = raise_errors

    # -- what was enqueued ---------------------------------------------------------------

    def enqueued(self, worker: type[Worker] | None = None,
                 queue: str | None = None) -> list[Enqueued]:
        """Jobs enqueued and not run yet, in order; only ``worker``'s or ``queue``'s if given."""
        return [job for job in self.waiting
                if (worker is None or job.worker.name == worker.name)
                and (queue is None or job.queue == queue)]

    def args(self, worker: type[Worker] | None = None) -> list[Any]:
        """The args of ``enqueued(worker)``, for the shortest assertions."""
        return [job.args for job in self.enqueued(worker)]

    def clear(self) -> None:
        self.waiting.clear()

    @property
    def dead(self) -> list[Run]:
        """The last run of every job that failed for good."""
        return [run for run in self.runs if run.outcome in (Outcome.DEAD, Outcome.DISCARDED)]

    # -- the enqueuer the workers use while faked ------------------------------------------

    def push(self, worker: type[Worker], conn: Any, encoded_args: Sequence[str],
             at: float | None = None, carrier: Mapping[str, str] | None = None) -> list[str]:
        ids = new_job_ids(len(encoded_args))
        now = time.time()
        traced = dict(carrier) if carrier else None
        made = [Enqueued(worker=worker, queue=worker.queue, args=json.loads(text), id=job_id,
                         enqueued_at=now, at=at, trace_context=traced)
                for text, job_id in zip(encoded_args, ids)]
        self.all += made
        if self.run_inline:
            for job in made:
                self._run_to_the_end(job)
        else:
            self.waiting += made
        return ids

    # -- running ---------------------------------------------------------------------------

    def drain(self, worker: type[Worker] | None = None) -> list[Run]:
        """Run every waiting job (only ``worker``'s, if given), oldest first, and the jobs they
        enqueue, until none is left; each failing job is retried at once until it succeeds or
        dies. Returns the runs made. With ``raise_errors`` (the default), the exception of the
        first job that died is raised once the rest have run."""
        made, first_death = [], None
        for _ in range(MAX_RUNS):
            job = next(iter(self.enqueued(worker)), None)
            if job is None:
                break
            self.waiting.remove(job)
            runs = self._run_to_the_end(job, raise_now=False)
            made += runs
            if first_death is None and runs[-1].outcome is not Outcome.DONE:
                first_death = runs[-1].exception
        else:
            raise RuntimeError(f"drain ran {MAX_RUNS} jobs and jobs were still being enqueued")
        if first_death is not None and self.raise_errors:
            raise first_death
        return made

    def _run_to_the_end(self, job: Enqueued, raise_now: bool = True) -> list[Run]:
        runs = []
        for attempt in range(1, MAX_RUNS):
            run = self._run_once(job, attempt)
            runs.append(run)
            self.runs.append(run)
            if run.outcome is not Outcome.RETRY:
                break
        died = runs[-1].exception if runs[-1].outcome is not Outcome.DONE else None
        if raise_now and self.raise_errors and died is not None:
            raise died
        return runs

    def _run_once(self, enqueued: Enqueued, attempt: int) -> Run:
        worker = enqueued.worker
        job = Job(id=enqueued.id, worker_name=worker.name, queue=enqueued.queue,
                  args=enqueued.args, attempt=attempt, enqueued_at=enqueued.enqueued_at,
                  trace_context=enqueued.trace_context)
        entered: list[object] = []
        instance = self.instances.get(worker)
        if instance is None:             # one per worker, as a child keeps one
            instance = self.instances[worker] = worker()
        try:
            self.middleware.before(job, entered)
            instance.handle(job.args)
        except BaseException as exc:       # as in a child: a job's SystemExit is a failure too
            if isinstance(exc, KeyboardInterrupt):
                raise
            if isinstance(exc, Retry):     # as in a child: a retry asked for, not an error
                error, delay = ErrorInfo(error_class="jobrunner.Retry", message=str(exc)), \
                    exc.in_seconds
            else:
                self.middleware.on_error(entered, job, exc)
                error = ErrorInfo.from_exception(exc, keep=worker.backtrace, skip=1)
                delay = None
            outcome = self._after_failure(job, worker, instance, error, delay)
            self.middleware.after(entered, job, outcome)
            return Run(job=enqueued, attempt=attempt, outcome=outcome, error=error,
                       exception=exc)
        self.middleware.after(entered, job, Outcome.DONE)
        return Run(job=enqueued, attempt=attempt, outcome=Outcome.DONE)

    @staticmethod
    def _after_failure(job: Job, worker: type[Worker], instance: Worker, error: ErrorInfo,
                       delay: float | None) -> Outcome:
        decision = after_failure(job, worker, exponential_delay, delay)
        if isinstance(decision, RetryLater):
            return Outcome.RETRY
        instance.retries_exhausted(job, error)
        return Outcome.DEAD if isinstance(decision, Bury) else Outcome.DISCARDED


@contextlib.contextmanager
def fake(registry: Registry | None = None, raise_errors: bool = True) -> Iterator[FakeJobs]:
    """Record every enqueue in the block instead of writing it; ``drain()`` runs them.

    ``registry``: its middleware wraps each run, as in a child. ``raise_errors``: ``drain``
    raises the exception of the first job that died (after running the rest)."""
    jobs = FakeJobs(registry, raise_errors=raise_errors)
    with _enqueuing_into(jobs):
        yield jobs


@contextlib.contextmanager
def inline(registry: Registry | None = None, raise_errors: bool = True) -> Iterator[FakeJobs]:
    """Run each job when it is enqueued, retries included, before the enqueue returns; with
    ``raise_errors`` a job that dies raises its exception from the enqueue call."""
    jobs = FakeJobs(registry, run_inline=True, raise_errors=raise_errors)
    with _enqueuing_into(jobs):
        yield jobs


@contextlib.contextmanager
def _enqueuing_into(jobs: FakeJobs) -> Iterator[None]:
    previous = worker_module.enqueuer_override
    worker_module.enqueuer_override = jobs
    try:
        yield
    finally:
        worker_module.enqueuer_override = previous


try:
    import pytest
except ImportError:       # pragma: no cover - the helpers work without pytest
    pass
else:
    @pytest.fixture
    def jobrunner_jobs() -> Iterator[FakeJobs]:
        """A ``fake()`` for one test: what the code under test enqueued, and ``drain()``."""
        with fake() as jobs:
            yield jobs

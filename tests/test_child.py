"""Unit tests of the child loop's decisions, on the in-memory backend."""

import signal
import time

import pytest

import jobrunner
from jobrunner.backends.memory import MemoryBackend, MemoryConsumer
from jobrunner.process.channel import Channel
from jobrunner.process.child import ChildLoop
from jobrunner.config import Settings
from jobrunner.job import Outcome
from jobrunner.process.messages import Stop

CALLS = []


class Succeeds(jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer

    def handle(self, args):
        CALLS.append(("Succeeds", args))


class Fails(jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer
    max_retries = 2

    def handle(self, args):
        raise ValueError(f"bad {args}")

    def retries_exhausted(self, job, error):
        CALLS.append(("exhausted", job.id, error.error_class))


class CustomBackoff(Fails):
    @classmethod
    def backoff(cls, retry_count):
        return 100 + retry_count


class AsksRetry(jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer

    def handle(self, args):
        raise jobrunner.Retry(in_seconds=7)


class Sleeps(jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer
    timeout = 0.2
    max_retries = 0

    def handle(self, args):
        time.sleep(5)


class Exits(jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer
    max_retries = 0

    def handle(self, args):
        raise SystemExit(3)


@pytest.fixture
def child():
    CALLS.clear()
    registry = jobrunner.Registry()
    for worker in (Succeeds, Fails, CustomBackoff, AsksRetry, Sleeps, Exits):
        registry.register(worker)
    consumer = MemoryConsumer()
    ours, theirs = Channel.pair()
    loop = ChildLoop(MemoryBackend(Settings(), registry, consumer), registry, Settings(),
                     ["default"], "test:1", theirs, "test")
    loop.consumer = consumer
    loop._install_signals()
    yield loop, consumer, ours
    for sig in (signal.SIGINT, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGTERM,
                signal.SIGUSR1, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ours.close()
    theirs.close()


def settle(loop, consumer, **fields):
    job = consumer.add(**fields)
    loop.run_job(consumer.fetch(0)[0])
    return consumer.settled[-1], job


def test_success_acks_counts_the_run_in_the_slot_and_reports_done(child):
    loop, consumer, supervisor_end = child
    (action, job, _), _ = settle(loop, consumer, worker_name="Succeeds", args={"a": 1})
    assert action == "ack"
    assert CALLS == [("Succeeds", {"a": 1})]
    assert (loop.slot.started, loop.slot.finished) == (1, 1)
    assert supervisor_end.receive() == []           # the "dones" waits for the next fetch
    loop.channel.flush_deferred()
    (message,) = supervisor_end.receive()
    assert message.kind == "dones"
    (done,) = message.jobs
    assert (done.id, done.worker, done.queue, done.outcome) == (
        job.id, "Succeeds", "default", Outcome.DONE.value)
    assert isinstance(done.micros, int) and 0 <= done.duration < 5


def test_failure_retries_with_the_backends_backoff_until_max_retries_then_buries(child):
    loop, consumer, _ = child
    for attempt in (1, 2):
        (action, job, (delay, error)), _ = settle(loop, consumer, worker_name="Fails",
                                                  args=attempt, attempt=attempt)
        assert action == "retry"
        assert error.error_class == "ValueError" and error.message == f"bad {attempt}"
        assert 2 ** (attempt - 1) <= delay <= 10 * 2 ** (attempt - 1)
    (action, job, error), added = settle(loop, consumer, worker_name="Fails", args=3, attempt=3)
    assert action == "bury" and error.error_class == "ValueError"
    assert CALLS == [("exhausted", added.id, "ValueError")]


def test_worker_backoff_overrides_the_backend(child):
    loop, consumer, _ = child
    (action, _, (delay, _)), _ = settle(loop, consumer, worker_name="CustomBackoff", attempt=2)
    assert (action, delay) == ("retry", 101)


def test_payload_retry_budget_and_keep_dead_win_over_the_worker(child):
    loop, consumer, _ = child
    (action, _, _), _ = settle(loop, consumer, worker_name="Fails", attempt=1, max_retries=0)
    assert action == "bury"
    (action, _, _), _ = settle(loop, consumer, worker_name="Fails", attempt=1, max_retries=0,
                               keep_dead=False)
    assert action == "discard"


def test_retry_exception_uses_its_delay(child):
    loop, consumer, _ = child
    (action, _, (delay, error)), _ = settle(loop, consumer, worker_name="AsksRetry")
    assert (action, delay, error.error_class) == ("retry", 7, "jobrunner.Retry")


def test_timeout_interrupts_the_job(child):
    loop, consumer, _ = child
    started = time.monotonic()
    (action, _, error), _ = settle(loop, consumer, worker_name="Sleeps")
    assert time.monotonic() - started < 2
    assert action == "bury" and error.error_class == "JobTimeout"


def test_system_exit_in_a_job_is_a_failure_not_the_end_of_the_child(child):
    loop, consumer, _ = child
    (action, _, error), _ = settle(loop, consumer, worker_name="Exits")
    assert action == "bury" and error.error_class == "SystemExit"


def test_unknown_worker_is_buried_with_a_reason(child):
    loop, consumer, _ = child
    (action, _, error), _ = settle(loop, consumer, worker_name="Gone")
    assert action == "bury"
    assert error.error_class == "jobrunner.UnknownWorker" and "'Gone'" in error.message


def test_unknown_worker_with_a_payload_retry_budget_is_retried(child):
    loop, consumer, _ = child
    (action, _, (_, error)), _ = settle(loop, consumer, worker_name="Gone", max_retries=25)
    assert action == "retry" and error.error_class == "jobrunner.UnknownWorker"


def test_bad_payload_is_buried_with_its_problem(child):
    loop, consumer, _ = child
    (action, _, error), _ = settle(loop, consumer, problem="invalid JSON")
    assert action == "bury"
    assert error.error_class == "jobrunner.InvalidPayload" and error.message == "invalid JSON"


def test_stop_message_sets_stopping(child):
    loop, _, supervisor_end = child
    supervisor_end.send(Stop())
    loop._read_channel()
    assert loop.stopping


def test_jobs_fetched_when_a_stop_arrives_go_back_unrun(child):
    loop, consumer, _ = child
    first = consumer.add(worker_name="Succeeds", args=1)
    second = consumer.add(worker_name="Succeeds", args=2)

    def fetch_then_stop(timeout, wake=None, limit=1):
        loop.stopping = True            # as if TERM arrived while fetching
        return [first, second]

    consumer.fetch = fetch_then_stop
    loop._loop_once()
    assert [(a, j) for a, j, _ in consumer.settled] == [("requeue", first), ("requeue", second)]
    assert CALLS == []

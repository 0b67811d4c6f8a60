"""Middleware around each job, in the child loop shared by both backends (memory backend)."""

import signal
import sys
import time

import pytest

import jobrunner
from jobrunner.backends.memory import MemoryBackend, MemoryConsumer
from jobrunner.process.channel import Channel
from jobrunner.process.child import ChildLoop
from jobrunner.config import Settings
from jobrunner.errors import ConfigError
from jobrunner.job import Outcome

CALLS = []


class Ok(jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer

    def handle(self, args):
        CALLS.append(("handle", args))


class Breaks(jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer
    max_retries = 3

    def handle(self, args):
        CALLS.append(("handle", args))
        raise KeyError("missing")


class AsksRetry(jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer

    def handle(self, args):
        raise jobrunner.Retry(in_seconds=5)


class Blocks(jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer
    timeout = 0.2
    max_retries = 0

    def handle(self, args):
        CALLS.append(("handle", args))


class Recorder:
    """Records every hook call as (name, hook, detail)."""

    def __init__(self, name, fail_in=None):
        self.name = name
        self.fail_in = fail_in

    def before(self, job):
        CALLS.append((self.name, "before", job.id))
        if self.fail_in == "before":
            raise RuntimeError(f"{self.name} refuses")

    def on_error(self, job, error):
        CALLS.append((self.name, "on_error", type(error).__name__,
                      sys.exc_info()[1] is error))
        if self.fail_in == "on_error":
            raise RuntimeError("reporter down")

    def after(self, job, outcome):
        CALLS.append((self.name, "after", outcome))
        if self.fail_in == "after":
            raise RuntimeError("metrics down")


class OnlyAfter:
    def after(self, job, outcome):
        CALLS.append(("only", "after", outcome))


class SlowBefore:
    def before(self, job):
        time.sleep(5)


@pytest.fixture
def make_child():
    CALLS.clear()
    made = []

    def make(*middleware):
        registry = jobrunner.Registry()
        for worker in (Ok, Breaks, AsksRetry, Blocks):
            registry.register(worker)
        for item in middleware:
            registry.add_middleware(item)
        consumer = MemoryConsumer()
        ours, theirs = Channel.pair()
        loop = ChildLoop(MemoryBackend(Settings(), registry, consumer), registry, Settings(),
                         ["default"], "test:1", theirs, "test")
        loop.consumer = consumer
        loop._install_signals()
        made.append((ours, theirs))
        return loop, consumer

    yield make
    for sig in (signal.SIGINT, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGTERM,
                signal.SIGUSR1, signal.SIGALRM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for pair in made:
        for end in pair:
            end.close()


def run(loop, consumer, **fields):
    job = consumer.add(**fields)
    loop.run_job(consumer.fetch(0)[0])
    return consumer.settled[-1][0], job


def test_hooks_wrap_a_successful_job_like_an_onion(make_child):
    loop, consumer = make_child(Recorder("outer"), Recorder("inner"))
    action, job = run(loop, consumer, worker_name="Ok", args=1)
    assert action == "ack"
    assert CALLS == [("outer", "before", job.id), ("inner", "before", job.id), ("handle", 1),
                     ("inner", "after", Outcome.DONE), ("outer", "after", Outcome.DONE)]


def test_a_failure_reaches_on_error_with_the_exception_then_after_with_the_outcome(make_child):
    loop, consumer = make_child(Recorder("outer"), Recorder("inner"))
    action, job = run(loop, consumer, worker_name="Breaks", args=2)
    assert action == "retry"
    assert CALLS[3:] == [("inner", "on_error", "KeyError", True),
                         ("outer", "on_error", "KeyError", True),
                         ("inner", "after", Outcome.RETRY), ("outer", "after", Outcome.RETRY)]
    _, job = run(loop, consumer, worker_name="Breaks", args=3, attempt=4)
    assert CALLS[-1] == ("outer", "after", Outcome.DEAD)


def test_a_before_that_raises_fails_the_run_and_skips_handle(make_child):
    loop, consumer = make_child(Recorder("outer"), Recorder("guard", fail_in="before"),
                                Recorder("inner"))
    action, job = run(loop, consumer, worker_name="Ok", args=1)
    assert action == "retry"
    (_, _, (delay, error)) = consumer.settled[-1]
    assert (error.error_class, error.message) == ("RuntimeError", "guard refuses")
    # only the middleware whose before ran hear about it; handle never ran
    assert CALLS == [("outer", "before", job.id), ("guard", "before", job.id),
                     ("outer", "on_error", "RuntimeError", True),
                     ("outer", "after", Outcome.RETRY)]


def test_errors_in_after_and_on_error_are_logged_and_change_nothing(make_child, caplog):
    loop, consumer = make_child(Recorder("a", fail_in="after"),
                                Recorder("b", fail_in="on_error"))
    action, _ = run(loop, consumer, worker_name="Ok", args=1)
    assert action == "ack"
    action, _ = run(loop, consumer, worker_name="Breaks", args=1)
    assert action == "retry"
    assert ("a", "on_error", "KeyError", True) in CALLS     # b's failure did not stop a's
    assert "middleware Recorder.after failed" in caplog.text
    assert "middleware Recorder.on_error failed" in caplog.text


def test_retry_is_not_an_error_and_partial_middleware_works(make_child):
    loop, consumer = make_child(Recorder("r"), OnlyAfter())
    action, _ = run(loop, consumer, worker_name="AsksRetry")
    assert action == "retry"
    assert [c for c in CALLS if c[1] == "on_error"] == []
    assert CALLS[-2:] == [("only", "after", Outcome.RETRY), ("r", "after", Outcome.RETRY)]


def test_before_runs_inside_the_jobs_timeout(make_child):
    loop, consumer = make_child(SlowBefore(), Recorder("r"))
    started = time.monotonic()
    action, _ = run(loop, consumer, worker_name="Blocks")
    assert time.monotonic() - started < 2
    assert action == "bury"
    assert consumer.settled[-1][2].error_class == "JobTimeout"
    assert ("handle", None) not in CALLS


def test_a_job_aborted_at_shutdown_is_requeued_and_after_says_so(make_child):
    loop, consumer = make_child(Recorder("r"))

    class Aborting:
        def before(self, job):
            signal.raise_signal(signal.SIGUSR1)     # the supervisor's abort, mid-job

    loop.middleware.items.append(Aborting())
    action, _ = run(loop, consumer, worker_name="Ok")
    assert action == "requeue" and loop.stopping
    assert CALLS[-1] == ("r", "after", Outcome.REQUEUED)


def test_jobs_that_reach_no_worker_skip_middleware(make_child):
    loop, consumer = make_child(Recorder("r"))
    assert run(loop, consumer, worker_name="Gone")[0] == "bury"
    assert run(loop, consumer, problem="invalid JSON")[0] == "bury"
    assert CALLS == []


def test_add_middleware_checks_what_it_is_given():
    registry = jobrunner.Registry()
    item = OnlyAfter()
    assert registry.add_middleware(item) is item and registry.middleware == [item]
    with pytest.raises(ConfigError, match="takes an instance"):
        registry.add_middleware(OnlyAfter)
    with pytest.raises(ConfigError, match="none of the methods before, after, on_error"):
        registry.add_middleware(object())


class LosesTheServerOnSettle(MemoryConsumer):
    """A consumer whose server goes away while a failed run is being settled."""

    def retry(self, job, delay, error):
        raise ConnectionError("server gone")


def test_after_still_closes_a_run_whose_settle_failed_and_says_error(make_child):
    loop, _ = make_child(Recorder("outer"), Recorder("inner"))
    consumer = loop.consumer = LosesTheServerOnSettle()
    job = consumer.add(worker_name="Breaks", args=4)
    with pytest.raises(ConnectionError):         # the child loop reconnects on this
        loop.run_job(consumer.fetch(0)[0])
    assert CALLS[-2:] == [("inner", "after", Outcome.ERROR), ("outer", "after", Outcome.ERROR)]
    assert consumer.settled == [] and job.id == "job-1"

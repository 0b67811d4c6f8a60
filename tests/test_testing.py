"""``jobrunner.testing``: what a user's own test suite does with it, with no server running."""

import pytest

import jobrunner
from jobrunner import testing
from jobrunner.job import Outcome

SENT = []


class SendMail(jobrunner.Worker):
    enqueuer = jobrunner.SidekiqEnqueuer
    queue = "mail"

    def handle(self, args):
        SENT.append(args["to"])


class SignUp(jobrunner.Worker):
    """Enqueues a follow-up job, as real jobs do."""

    enqueuer = jobrunner.PgEnqueuer

    def handle(self, args):
        SendMail.enqueue(None, {"to": args["email"]})


class Flaky(jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer
    max_retries = 2
    runs = []
    exhausted = []

    def handle(self, args):
        Flaky.runs.append(args)
        if args == "always" or len(Flaky.runs) < 2:
            raise ValueError(f"flaky {args}")

    def retries_exhausted(self, job, error):
        Flaky.exhausted.append((job.attempt, error.error_class))


class NoEnqueuer(jobrunner.Worker):
    pass


@pytest.fixture(autouse=True)
def fresh():
    SENT.clear()
    Flaky.runs, Flaky.exhausted = [], []


def test_enqueues_are_recorded_not_sent_and_drain_runs_them_and_their_jobs():
    with testing.fake() as jobs:
        job_id = SignUp.enqueue(None, {"email": "ann@example.com"})    # no connection needed
        SendMail.enqueue_in(None, 60, {"to": "bob@example.com"})
        assert [j.id for j in jobs.enqueued(SignUp)] == [job_id]
        assert jobs.args(SendMail) == [{"to": "bob@example.com"}]
        [later] = jobs.enqueued(queue="mail")
        assert 59 < later.delay <= 60 and later.worker is SendMail
        runs = jobs.drain()
        assert SENT == ["bob@example.com", "ann@example.com"]   # the job SignUp enqueued ran too
        assert [run.outcome for run in runs] == [Outcome.DONE] * 3
        assert jobs.enqueued() == []
    assert jobrunner.worker.enqueuer_override is None           # the block restores it


def test_args_are_checked_as_in_production():
    with testing.fake() as jobs:
        with pytest.raises(TypeError, match="SendMail: args must round-trip"):
            SendMail.enqueue(None, {"when": (1, 2)})
        with pytest.raises(jobrunner.ConfigError, match="NoEnqueuer: set enqueuer"):
            NoEnqueuer.enqueue(None, {})
        assert jobs.all == []


def test_a_job_that_fails_is_retried_as_in_production_then_dies():
    with testing.fake(raise_errors=False) as jobs:
        Flaky.enqueue(None, "once")
        Flaky.enqueue(None, "always")
        runs = jobs.drain()
    assert [(r.job.args, r.attempt, r.outcome) for r in runs] == [
        ("once", 1, Outcome.RETRY), ("once", 2, Outcome.DONE),
        ("always", 1, Outcome.RETRY), ("always", 2, Outcome.RETRY),
        ("always", 3, Outcome.DEAD)]                             # max_retries 2: three runs
    [dead] = jobs.dead
    assert (dead.error.error_class, dead.error.message) == ("ValueError", "flaky always")
    assert "in handle" in "\n".join(dead.error.backtrace)
    assert Flaky.exhausted == [(3, "ValueError")]


def test_drain_raises_the_error_of_a_job_that_died_after_running_the_rest():
    with testing.fake() as jobs:
        Flaky.enqueue(None, "always")
        SendMail.enqueue(None, {"to": "c@example.com"})
        with pytest.raises(ValueError, match="flaky always"):
            jobs.drain()
        assert SENT == ["c@example.com"]


def test_inline_runs_each_job_at_enqueue():
    with testing.inline():
        SignUp.enqueue(None, {"email": "d@example.com"})
        assert SENT == ["d@example.com"]
        with pytest.raises(ValueError, match="flaky always"):
            Flaky.enqueue(None, "always")


def test_the_middleware_of_a_registry_wraps_each_run():
    seen = []

    class Recorder:
        def after(self, job, outcome):
            seen.append((job.worker_name, job.attempt, outcome.value))

    registry = jobrunner.Registry()
    registry.add_middleware(Recorder())
    with testing.fake(registry) as jobs:
        SendMail.enqueue(None, {"to": "e@example.com"})
        jobs.drain()
    assert seen == [("SendMail", 1, "done")]


def test_the_pytest_fixture_fakes_one_test(jobrunner_jobs):
    SendMail.enqueue(None, {"to": "f@example.com"})
    assert jobrunner_jobs.args(SendMail) == [{"to": "f@example.com"}]
    assert jobrunner.worker.enqueuer_override is jobrunner_jobs

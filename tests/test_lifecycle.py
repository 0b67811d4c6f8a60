"""The one rule after a failed run: retry later, bury or discard, whatever the backend."""

import pytest

import jobrunner
from jobrunner.backends.sidekiq import payload as sp
from jobrunner.job import Job
from jobrunner.lifecycle import Bury, Discard, RetryLater, after_failure
from test_sidekiq_payload import raw_job


class Plain(jobrunner.Worker):
    max_retries = 2

    def handle(self, args):
        pass


class OwnBackoff(Plain):
    @classmethod
    def backoff(cls, retry_count):
        return 100 + retry_count


def default_backoff(retry_count):
    return 7.0 * (retry_count + 1)


def outcome(job, max_retries):
    """The decision's kind, as the Sidekiq wire names it, for a worker with ``max_retries``."""
    worker = None if max_retries is None else type("W", (Plain,), {"max_retries": max_retries})
    decision = after_failure(job, worker, default_backoff)
    return {RetryLater: "retry", Bury: "dead", Discard: "discard"}[type(decision)]


def test_a_sidekiq_payload_follows_its_own_retry_budget_before_the_workers():
    fresh = sp.parse(raw_job(retry=1), "q")
    assert outcome(fresh, 25) == "retry"
    last = sp.parse(raw_job(retry=1, retry_count=0), "q")       # second run failed
    assert outcome(last, 25) == "dead"
    assert outcome(sp.parse(raw_job(retry=0), "q"), 25) == "dead"
    assert outcome(sp.parse(raw_job(retry=False), "q"), 25) == "discard"
    assert outcome(sp.parse(raw_job(retry=True), "q"), 3) == "retry"
    assert outcome(sp.parse(raw_job(retry=True), "q"), None) == "dead"
    assert outcome(sp.parse("[]", "q"), 25) == "dead"


@pytest.mark.parametrize("attempt, expected", [(1, "retry"), (2, "retry"), (3, "dead")])
def test_max_retries_counts_the_retries_after_the_first_failure(attempt, expected):
    assert outcome(Job(queue="q", attempt=attempt), 2) == expected


def test_the_delay_asked_for_wins_then_the_workers_backoff_then_the_backends():
    job = Job(queue="q", attempt=2)
    assert after_failure(job, OwnBackoff, default_backoff, delay=3) == RetryLater(3)
    assert after_failure(job, OwnBackoff, default_backoff) == RetryLater(101)
    assert after_failure(job, Plain, default_backoff) == RetryLater(14.0)


def test_a_job_of_an_unknown_worker_is_buried_never_dropped():
    assert after_failure(Job(queue="q"), None, default_backoff) == Bury()


def test_a_job_that_cannot_run_is_buried_whatever_its_budget():
    job = Job(queue="q", problem="message has no `args`", max_retries=5)
    assert after_failure(job, Plain, default_backoff) == Bury()

"""The operator half of the backend contract: listing and moving jobs, queues and processes.

``Inspector.jobs``, ``job_action``, ``find_job``, ``queue_action``, ``processes`` and
``signal`` (``jobrunner/backends/base.py``), and the failure record a consumer stores, each a
behaviour run on "memory", "pgmq" and "sidekiq" through the harness of
``contract_support.py``. What ``jobrunner retries|scheduled|job|busy|queue|quiet|stop`` print
is built on these.
"""

import time

import pytest

from contract_support import ERROR, HOUR, fetch, one, only
from jobrunner.backends.inspector import KILLED, KILLED_MESSAGE
from jobrunner.backends.paused import PAUSE_CHECK_SECONDS
from jobrunner.job import ErrorInfo
from jobrunner.process.state import RunningJob


def charge_card(amount):
    raise ValueError(f"card declined for {amount}")


def raised(keep=True):
    """The ``ErrorInfo`` of a real exception, with its traceback."""
    try:
        charge_card(12)
    except ValueError as exc:
        return ErrorInfo.from_exception(exc, keep=keep)


def fields(entry, *names):
    return {name: entry[name] for name in names}


def retried(contract, worker, *args, error=ERROR):
    """Enqueue ``args`` and fail each once, to be retried in an hour; returns their ids."""
    ids = contract.enqueue(worker, *args)
    consumer = contract.consumer()
    for _ in ids:
        consumer.retry(one(consumer), HOUR, error)
    return ids


# -- the failure record ---------------------------------------------------------------------

def test_a_failed_run_stores_class_message_time_and_backtrace_with_the_job(contract):
    worker = contract.worker()
    [job_id] = contract.enqueue(worker, {"amount": 12})
    consumer = contract.consumer()
    before = contract.now()
    consumer.retry(one(consumer), HOUR, raised())
    [entry] = contract.inspector.jobs("retrying", queue=contract.queue)
    assert fields(entry, "state", "id", "worker", "queue", "error_class", "error_message",
                  "attempts", "died_at") == {
        "state": "retrying", "id": job_id, "worker": worker.name, "queue": contract.queue,
        "error_class": "ValueError", "error_message": "card declined for 12", "attempts": 1,
        "died_at": None}
    assert before - 1 <= entry["failed_at"] <= contract.now() + 1
    assert before + HOUR - 60 <= entry["run_at"] <= contract.now() + HOUR + 60
    [found] = contract.inspector.find_job(job_id)
    assert found["state"] == "retrying" and found["error_class"] == "ValueError"
    text = "\n".join(found["backtrace"])
    assert "in charge_card" in text and text.endswith('raise ValueError(f"card declined for '
                                                      '{amount}")')
    # The message is stored beside it, never in it: whatever raised may have put a job's args
    # there, and Sidekiq's Web UI shows a backtrace unescaped.
    assert "card declined for 12" not in text

    contract.make_due()
    again = one(contract.consumer())
    assert again.attempt == 2
    consumer.bury(again, ErrorInfo(error_class="KeyError", message="'card'"))
    [dead] = contract.inspector.jobs("dead", queue=contract.queue)
    assert fields(dead, "state", "id", "error_class", "error_message", "attempts", "run_at") == {
        "state": "dead", "id": job_id, "error_class": "KeyError", "error_message": "'card'",
        "attempts": 2, "run_at": None}
    assert dead["died_at"] >= entry["failed_at"]
    [found] = contract.inspector.find_job(job_id)
    assert found["state"] == "dead" and found["backtrace"] == []   # the last error had none


@pytest.mark.parametrize("keep, kept", [(False, 0), (2, 2)])
def test_the_workers_backtrace_option_limits_the_stored_lines(contract, keep, kept):
    worker = contract.worker()
    [job_id] = retried(contract, worker, "x", error=raised(keep=keep))
    [found] = contract.inspector.find_job(job_id)
    assert found["backtrace"] == (raised().backtrace[-kept:] if kept else [])


# -- listing --------------------------------------------------------------------------------

def test_scheduled_jobs_are_listed_soonest_first_and_filtered(contract):
    worker, other = contract.worker(), contract.worker()
    [late] = contract.enqueue(worker, "late", delay=2 * HOUR)
    [soon] = contract.enqueue(worker, "soon", delay=HOUR)
    [theirs] = contract.enqueue(other, "other", delay=HOUR + 60)
    contract.enqueue(worker, "now")
    listed = contract.inspector.jobs("scheduled", queue=contract.queue)
    assert [e["id"] for e in listed] == [soon, theirs, late]
    assert [e["state"] for e in listed] == ["scheduled"] * 3
    assert fields(listed[0], "attempts", "error_class", "failed_at", "died_at") == {
        "attempts": 0, "error_class": None, "failed_at": None, "died_at": None}
    assert listed[0]["run_at"] < listed[1]["run_at"] < listed[2]["run_at"]
    inspector = contract.inspector
    assert [e["id"] for e in inspector.jobs("scheduled", queue=contract.queue,
                                            worker=worker.name)] == [soon, late]
    assert [e["id"] for e in inspector.jobs("scheduled", ids=[late, "nope"])] == [late]
    assert inspector.jobs("scheduled", ids=[]) == []
    assert [e["id"] for e in inspector.jobs("scheduled", queue=contract.queue, offset=1,
                                            limit=1)] == [theirs]


def test_retrying_jobs_are_found_by_their_error_text(contract):
    worker = contract.worker()
    [declined] = retried(contract, worker, "a", error=raised())
    [other] = retried(contract, worker, "b")
    inspector = contract.inspector
    assert [e["id"] for e in inspector.jobs("retrying", queue=contract.queue,
                                            error="DECLINED")] == [declined]
    assert [e["id"] for e in inspector.jobs("retrying", queue=contract.queue,
                                            error="valueerror")] == [declined, other]
    assert inspector.jobs("retrying", queue=contract.queue, error="nothing like it") == []


def test_find_job_says_where_a_job_is(contract):
    worker = contract.worker()
    waiting, running = contract.enqueue(worker, "waiting", "running")
    [scheduled] = contract.enqueue(worker, "later", delay=HOUR)
    inspector = contract.inspector
    [found] = inspector.find_job(waiting)
    assert fields(found, "state", "id", "worker", "queue", "attempts", "backtrace") == {
        "state": "waiting", "id": waiting, "worker": worker.name, "queue": contract.queue,
        "attempts": 0, "backtrace": []}
    assert found["args"] == contract.dead_args("waiting")
    assert inspector.find_job(scheduled)[0]["state"] == "scheduled"
    consumer = contract.consumer()
    first = one(consumer)
    assert first.id == waiting
    assert [e["state"] for e in inspector.find_job(waiting)] == ["running"]
    assert inspector.find_job("0190-no-such-job") == []
    consumer.ack(first)
    assert inspector.find_job(waiting) == [] or \
        [e["state"] for e in inspector.find_job(waiting)] == ["done"]


# -- actions --------------------------------------------------------------------------------

def test_run_now_puts_a_retrying_job_in_its_queue_with_its_attempts(contract):
    worker = contract.worker()
    [job_id] = retried(contract, worker, "r")
    done, skipped, ambiguous = contract.inspector.job_action("retrying", "run", ids=[job_id])
    assert [e["id"] for e in done] == [job_id] and skipped == [] and ambiguous == []
    job = one(contract.consumer())
    assert (job.id, job.attempt) == (job_id, 2)


def test_run_now_puts_a_scheduled_job_in_its_queue_as_its_first_attempt(contract):
    worker = contract.worker()
    [job_id] = contract.enqueue(worker, "s", delay=HOUR)
    assert contract.counts() == only(scheduled=1)
    done, _, _ = contract.inspector.job_action("scheduled", "run", queue=contract.queue)
    assert [e["id"] for e in done] == [job_id]
    job = one(contract.consumer())
    assert (job.id, job.attempt, job.args) == (job_id, 1, "s")


def test_kill_moves_a_retrying_job_to_dead_with_its_error(contract):
    worker = contract.worker()
    [job_id] = retried(contract, worker, "k", error=raised())
    done, _, _ = contract.inspector.job_action("retrying", "kill", ids=[job_id])
    assert [e["id"] for e in done] == [job_id]
    assert contract.counts() == only(dead=1)
    [dead] = contract.dead()
    assert fields(dead, "id", "error_class", "error_message", "attempts") == {
        "id": job_id, "error_class": "ValueError", "error_message": "card declined for 12",
        "attempts": 1}
    assert "in charge_card" in "\n".join(contract.inspector.find_job(job_id)[0]["backtrace"])


def test_kill_of_a_job_that_never_failed_says_an_operator_did_it(contract):
    worker = contract.worker()
    [job_id] = contract.enqueue(worker, "k", delay=HOUR)
    contract.inspector.job_action("scheduled", "kill", ids=[job_id])
    [dead] = contract.dead()
    assert fields(dead, "id", "error_class", "error_message") == {
        "id": job_id, "error_class": KILLED, "error_message": KILLED_MESSAGE}


def test_delete_removes_scheduled_and_retrying_jobs(contract):
    worker = contract.worker()
    [failed] = retried(contract, worker, "r")
    [later] = contract.enqueue(worker, "s", delay=HOUR)
    inspector = contract.inspector
    assert [e["id"] for e in inspector.job_action("retrying", "delete", ids=[failed])[0]] \
        == [failed]
    assert [e["id"] for e in inspector.job_action("scheduled", "delete", ids=[later])[0]] \
        == [later]
    assert contract.counts() == only()
    assert inspector.find_job(failed) == [] and inspector.find_job(later) == []


def test_an_action_moves_a_job_once(contract):
    worker = contract.worker()
    [job_id] = retried(contract, worker, "r")
    inspector = contract.inspector
    assert len(inspector.job_action("retrying", "run", ids=[job_id])[0]) == 1
    assert inspector.job_action("retrying", "run", ids=[job_id]) == ([], [], [])
    assert inspector.job_action("retrying", "kill", ids=[job_id]) == ([], [], [])
    assert contract.counts() == only(waiting=1)


def test_dead_retry_is_run_now_with_fresh_attempts(contract):
    worker = contract.worker()
    [job_id] = contract.enqueue(worker, "d")
    consumer = contract.consumer()
    consumer.bury(one(consumer), ERROR)
    done, _, _ = contract.inspector.job_action("dead", "run", ids=[job_id])
    assert [e["id"] for e in done] == [job_id]
    assert one(contract.consumer()).attempt == 1


# -- queues ---------------------------------------------------------------------------------

def test_a_paused_queue_keeps_its_jobs_until_resumed(contract):
    paused, other = contract.queue, contract.new_queue()
    worker, elsewhere = contract.worker(paused), contract.worker(other)
    inspector = contract.inspector
    result = inspector.queue_action("pause", paused)
    assert result == {"queue": paused, "action": "pause", "paused": True, "purged": None}
    assert paused in inspector.paused_queues()
    [held] = contract.enqueue(worker, "held")          # still accepted while paused
    [ran] = contract.enqueue(elsewhere, "runs")
    consumer = contract.consumer([paused, other])
    assert [job.id for job in fetch(consumer, limit=10)] == [ran]
    assert fetch(consumer, limit=10) == []
    assert contract.row(paused)["paused"] is True and contract.counts(paused) == only(waiting=1)
    assert inspector.queue_action("resume", paused)["paused"] is False
    assert paused not in inspector.paused_queues()
    contract.expire_pause_checks(consumer)
    assert [job.id for job in fetch(consumer, limit=10)] == [held]


def test_a_running_consumer_sees_a_pause_within_the_check_interval(contract):
    worker = contract.worker()
    contract.enqueue(worker, "a", "b")
    consumer = contract.consumer()
    consumer.ack(one(consumer))
    contract.inspector.queue_action("pause", contract.queue)
    contract.expire_pause_checks(consumer)
    assert fetch(consumer) == []
    assert PAUSE_CHECK_SECONDS <= 5, "a heartbeat: docs/operations.md promises it"


def test_purge_deletes_the_waiting_jobs_only(contract):
    worker = contract.worker()
    running, *_ = contract.enqueue(worker, "w1", "w2", "w3", "failed")
    contract.enqueue(worker, "later", delay=HOUR)
    consumer = contract.consumer()
    jobs = fetch(consumer, limit=4)
    assert [job.args for job in jobs] == ["w1", "w2", "w3", "failed"]
    consumer.retry(jobs[3], HOUR, ERROR)
    consumer.requeue_many(jobs[1:3])                  # w1 stays running
    result = contract.inspector.queue_action("purge", contract.queue)
    assert result == {"queue": contract.queue, "action": "purge", "paused": False, "purged": 2}
    counts = contract.counts()
    del counts["busy"]      # Redis counts busy jobs from heartbeats; this test sends none
    assert counts == {"waiting": 0, "scheduled": 1, "retrying": 1, "dead": 0}
    assert [e["state"] for e in contract.inspector.find_job(running)] == ["running"]


# -- processes ------------------------------------------------------------------------------

def test_a_supervisor_is_listed_with_its_running_jobs_and_leaves_when_it_stops(contract):
    worker = contract.worker()
    [job_id] = contract.enqueue(worker, {"card": 4})
    consumer = contract.consumer()
    job = one(consumer)
    started = time.time()
    running = RunningJob(child_id=contract.child_id, job_id=job.id, worker=worker.name,
                         queue=contract.queue, started_at=started, token=consumer.token(job))
    contract.housekeeper.tick(contract.state(busy=(running,)))
    [listed] = [p for p in contract.inspector.processes() if p["identity"] == contract.identity]
    assert fields(listed, "hostname", "queues", "concurrency", "busy", "quiet") == {
        "hostname": "contract", "queues": [contract.queue], "concurrency": 1, "busy": 1,
        "quiet": False}
    [entry] = listed["running"]
    assert fields(entry, "queue", "worker", "job_id") == {
        "queue": contract.queue, "worker": worker.name, "job_id": job_id}
    assert entry["args"] == contract.dead_args({"card": 4})
    assert abs(entry["run_at"] - started) < 2
    assert contract.identity in [p["identity"] for p in contract.inspector.stats()["processes"]]
    [found] = contract.inspector.find_job(job_id)
    assert (found["state"], found["process"]) == ("running", contract.identity)
    contract.housekeeper.close()
    contract.forget_housekeeper()
    assert contract.identity not in [p["identity"] for p in contract.inspector.processes()]


def test_quiet_and_stop_reach_the_supervisors_next_tick(contract):
    housekeeper = contract.housekeeper
    assert housekeeper.tick(contract.state()) == []
    inspector = contract.inspector
    assert inspector.signal(contract.identity, "quiet") is True
    assert housekeeper.tick(contract.state()) == ["TSTP"]
    assert housekeeper.tick(contract.state(quiet=True)) == []
    [listed] = [p for p in inspector.processes() if p["identity"] == contract.identity]
    assert listed["quiet"] is True
    assert inspector.signal(contract.identity, "stop") is True
    assert housekeeper.tick(contract.state(quiet=True)) == ["TERM"]
    assert inspector.signal("nohost:1:000000000000", "stop") is False

"""The backend contract (``jobrunner/backends/base.py``), stated once and run on every backend.

Each test is one behaviour, parametrised over "memory", "pgmq" and "sidekiq". A test talks to
the backend only through its roles (enqueuer, consumer, housekeeper, inspector) and through a
``Harness``, which knows the few things a test needs that the interface does not offer: how to
make a delayed or retried job due without waiting, how to store a body that is not a job, and
the places where a backend differs on purpose. Those differences are attributes of the
harness with a comment each; no assertion is loosened for every backend because one differs.

Real backends run on this test run's own servers (``tests/conftest.py``), and every test makes
its own queue names, so no assertion depends on what another test left.
"""

import collections
import datetime
import json
import time

import attr

from contract_support import ERROR, HOUR, STATES, fetch, one, only
from jobrunner.job import ErrorInfo


# -- enqueue and fetch ----------------------------------------------------------------------

def test_enqueue_then_fetch_gives_the_job(contract):
    worker = contract.worker()
    [job_id] = contract.enqueue(worker, {"n": [1, "é"]})
    consumer = contract.consumer()
    job = one(consumer)
    assert (job.id, job.worker_name, job.args, job.attempt, job.queue, job.problem) == (
        job_id, worker.name, {"n": [1, "é"]}, 1, contract.queue, None)
    assert job.enqueued_at is None or abs(job.enqueued_at - time.time()) < 60
    json.dumps(consumer.token(job))            # a token is a small JSON value
    assert fetch(consumer) == [], "a fetched job is not handed out twice"


def test_ack_removes_the_job(contract):
    worker = contract.worker()
    contract.enqueue(worker, "now", "later")
    consumer = contract.consumer()
    first, second = fetch(consumer, limit=2)
    consumer.ack(first)
    consumer.ack_later(second)                  # held back until the next fetch or flush
    consumer.flush()
    assert fetch(consumer, limit=2) == []
    assert contract.counts() == only()
    assert contract.dead() == []


def test_a_delayed_job_waits_until_due_then_runs_as_its_first_attempt(contract):
    worker = contract.worker()
    [job_id] = contract.enqueue(worker, "later", delay=HOUR)
    consumer = contract.consumer()
    assert fetch(consumer) == []
    assert contract.counts() == only(scheduled=1)
    contract.make_due()
    job = one(consumer)
    assert (job.id, job.args, job.attempt) == (job_id, "later", 1)


# -- failures -------------------------------------------------------------------------------

def test_retry_hides_the_job_until_due_then_it_runs_again_as_attempt_2(contract):
    worker = contract.worker()
    [job_id] = contract.enqueue(worker, {"k": 1})
    consumer = contract.consumer()
    consumer.retry(one(consumer), HOUR, ERROR)
    assert fetch(consumer) == []
    assert contract.counts() == only(retrying=1)
    contract.make_due()
    again = one(consumer)
    assert (again.id, again.worker_name, again.args, again.attempt) == (
        job_id, worker.name, {"k": 1}, 2)


def test_bury_keeps_the_job_in_dead_with_its_error_and_attempts(contract):
    worker = contract.worker()
    [job_id] = contract.enqueue(worker, {"n": 1})
    consumer = contract.consumer()
    consumer.retry(one(consumer), HOUR, ERROR)
    contract.make_due()
    consumer.bury(one(consumer), ErrorInfo(error_class="KeyError", message="'n' for good"))
    assert fetch(consumer) == []
    [entry] = contract.dead()
    assert entry == {"backend": contract.name, "state": "dead", "queue": contract.queue,
                     "id": job_id, "msg_id": entry["msg_id"], "worker": worker.name,
                     "args": contract.dead_args({"n": 1}), "error_class": "KeyError",
                     "error_message": "'n' for good", "attempts": 2,
                     "failed_at": entry["failed_at"], "run_at": None,
                     "died_at": entry["died_at"]}
    assert entry["failed_at"] <= entry["died_at"] + 1
    assert abs(entry["died_at"] - contract.now()) < 60
    assert contract.dead(ids=[job_id]) == [entry]
    assert contract.counts() == only(dead=1)


def test_dead_retry_puts_the_job_back_with_its_id_and_fresh_attempts(contract):
    worker = contract.worker()
    [job_id] = contract.enqueue(worker, {"k": [1, 2]})
    consumer = contract.consumer()
    consumer.bury(one(consumer), ERROR)
    done, skipped, ambiguous = contract.inspector.dead_action(
        "retry", ids=[job_id], queue=contract.queue)
    assert ([e["id"] for e in done], skipped, ambiguous) == ([job_id], [], [])
    assert contract.dead() == []
    again = one(consumer)
    assert (again.id, again.worker_name, again.args, again.attempt) == (
        job_id, worker.name, {"k": [1, 2]}, 1)


def test_dead_delete_removes_the_job(contract):
    worker = contract.worker()
    [job_id, kept_id] = contract.enqueue(worker, "gone", "kept")
    consumer = contract.consumer()
    for job in fetch(consumer, limit=2):
        consumer.bury(job, ERROR)
    done, skipped, ambiguous = contract.inspector.dead_action(
        "delete", ids=[job_id], queue=contract.queue)
    assert ([e["id"] for e in done], skipped, ambiguous) == ([job_id], [], [])
    assert [e["id"] for e in contract.dead()] == [kept_id]
    assert fetch(consumer) == []
    assert contract.counts()["dead"] == 1


def test_discard_leaves_no_trace(contract):
    worker = contract.worker()
    [job_id] = contract.enqueue(worker, "drop me")
    consumer = contract.consumer()
    consumer.discard(one(consumer), ERROR)
    assert fetch(consumer) == []
    if contract.discard_keeps_dead:
        assert [e["id"] for e in contract.dead()] == [job_id]
    else:
        assert contract.dead() == []
        assert contract.counts() == only()


def test_a_payload_that_cannot_run_comes_back_with_a_problem_and_bury_keeps_it(contract):
    contract.worker()
    contract.inject_bad_payload(contract.queue)
    consumer = contract.consumer()
    bad = one(consumer)
    assert isinstance(bad.problem, str) and bad.problem
    assert (bad.queue, bad.attempt) == (contract.queue, 1)
    consumer.bury(bad, ErrorInfo(error_class="jobrunner.InvalidPayload", message=bad.problem))
    assert fetch(consumer) == []
    [entry] = contract.dead()
    assert entry["error_class"] == contract.invalid_payload_class("jobrunner.InvalidPayload")
    assert entry["error_message"] == bad.problem
    assert contract.counts() == only(dead=1)


def test_a_body_too_deep_to_decode_is_listed_as_unreadable_beside_the_other_dead_jobs(contract):
    worker = contract.worker()
    [job_id] = contract.enqueue(worker, "fine")
    contract.inject_body(contract.queue, "[" * 10000 + "]" * 10000)
    consumer = contract.consumer()
    jobs = fetch(consumer, limit=2)
    assert sorted(bool(job.problem) for job in jobs) == [False, True]
    for job in jobs:
        consumer.bury(job, ErrorInfo(error_class="jobrunner.InvalidPayload", message=job.problem)
                      if job.problem else ERROR)
    # Sidekiq keeps such text raw, with no queue in it: look in every queue.
    entries = [e for e in contract.inspector.dead_jobs() if e["queue"] in (contract.queue, None)]
    [fine] = [e for e in entries if e["id"] == job_id]
    assert (fine["worker"], fine["error_class"]) == (worker.name, ERROR.error_class)
    [bad] = [e for e in entries if e is not fine]
    assert (bad["worker"], bad["error_class"]) == (None, "jobrunner.Unreadable")
    assert "nested too deeply" in bad["error_message"]
    [excerpt] = bad["args"]
    assert excerpt.startswith("[[[[") and excerpt.endswith("…") and len(excerpt) <= 1001


# -- putting back ---------------------------------------------------------------------------

def test_requeue_puts_the_job_back_unchanged_and_first_in_line(contract):
    worker = contract.worker()
    [first_id] = contract.enqueue(worker, "first")
    consumer = contract.consumer()
    first = one(consumer)
    contract.enqueue(worker, "second", "third")
    consumer.requeue(first)
    jobs = fetch(consumer, limit=3)
    assert [(j.args, j.attempt) for j in jobs] == [("first", 1), ("second", 1), ("third", 1)]
    assert jobs[0].id == first_id


def test_strict_order_serves_the_first_queue_and_weighted_each_by_turns(contract):
    queues = [contract.queue] + [contract.new_queue() for _ in range(2)]
    for queue in queues:
        contract.enqueue(contract.worker(queue=queue), *range(40))
    strict = contract.consumer(queues)
    assert {one(strict).queue for _ in range(10)} == {queues[0]}
    contract.settings = attr.evolve(contract.settings, queue_order="weighted")
    contract._backend = None         # a pool's backend is made with its order
    weighted = contract.consumer(queues)
    firsts = collections.Counter(one(weighted).queue for _ in range(60))
    assert set(firsts) == set(queues) and min(firsts.values()) >= 5, firsts


def test_requeue_many_keeps_the_order_of_the_batch(contract):
    worker = contract.worker()
    contract.enqueue(worker, "a", "b", "c", "d")
    consumer = contract.consumer()
    batch = fetch(consumer, limit=4)
    assert [job.args for job in batch] == ["a", "b", "c", "d"]
    consumer.ack(batch[0])
    contract.enqueue(worker, "e")
    consumer.requeue_many(batch[1:])
    again = fetch(consumer, limit=4)
    assert [(j.args, j.attempt) for j in again] == [("b", 1), ("c", 1), ("d", 1), ("e", 1)]
    assert [j.id for j in again[:3]] == [j.id for j in batch[1:]]


def test_acks_a_lost_consumer_held_are_written_by_the_next_one(contract):
    worker = contract.worker()
    contract.enqueue(worker, "done", "unstarted")
    first = contract.consumer()
    done, unstarted = fetch(first, limit=2)
    first.ack_later(done)
    acks = first.take_unsent_acks()             # the connection is gone; the child keeps them
    assert acks is not None
    assert first.take_unsent_acks() is None     # taken out: none left behind
    second = contract.consumer(acks=acks)       # the same child, reconnected
    second.requeue_many([unstarted])            # what the child does with the unstarted rest
    second.flush()
    [again] = fetch(second, limit=2)
    assert (again.id, again.args, again.attempt) == (unstarted.id, "unstarted", 1)
    assert contract.dead() == []


# -- recovery after a child stopped ---------------------------------------------------------

def test_a_crash_counts_the_run_as_a_failed_attempt(contract):
    worker = contract.worker(max_retries=1)
    [job_id] = contract.enqueue(worker, "poison")
    consumer = contract.consumer()
    job = one(consumer)
    contract.housekeeper.recover(contract.child_id, [consumer.token(job)], crashed=True,
                                 reason="died")
    assert fetch(consumer) == []
    assert contract.counts() == only(retrying=1)
    contract.make_due()
    again = one(consumer)
    assert (again.id, again.attempt) == (job_id, 2)


def test_a_crash_on_the_last_attempt_buries_the_job_with_the_reason(contract):
    worker = contract.worker(max_retries=0)
    [job_id] = contract.enqueue(worker, "poison")
    consumer = contract.consumer()
    job = one(consumer)
    contract.housekeeper.recover(contract.child_id, [consumer.token(job)], crashed=True,
                                 reason="timeout")
    [entry] = contract.dead()
    assert (entry["id"], entry["error_class"], entry["attempts"]) == (job_id, "JobTimeout", 1)
    assert fetch(consumer) == []


def test_a_shutdown_puts_the_job_back_unchanged_and_its_old_receipt_settles_nothing(contract):
    worker = contract.worker()
    [job_id] = contract.enqueue(worker, "interrupted")
    consumer = contract.consumer()
    job = one(consumer)
    contract.housekeeper.recover(contract.child_id, [consumer.token(job)], crashed=False)
    consumer.bury(job, ERROR)                   # too late: recovery already put it back
    assert contract.dead() == []
    other_child = contract.consumer(child_id=contract.identity + ":2")
    again = one(other_child)
    assert (again.id, again.args, again.attempt) == (job_id, "interrupted", 1)
    # The first child's receipt names its own delivery only, not the one made since.
    consumer.bury(job, ERROR)
    assert contract.dead() == []
    other_child.ack(again)
    assert contract.counts() == only()


def test_held_jobs_go_back_unchanged_when_the_running_one_crashed(contract):
    worker = contract.worker(max_retries=1)
    contract.enqueue(worker, "running", "held")
    consumer = contract.consumer()
    running, held = fetch(consumer, limit=2)
    contract.housekeeper.recover(contract.child_id, [consumer.token(running)], crashed=True,
                                 held=[consumer.token(held)])
    assert contract.counts() == only(waiting=1, retrying=1)
    [again] = fetch(consumer, limit=2)
    assert (again.id, again.attempt) == (held.id, 1)


def test_a_child_killed_while_idle_has_nothing_charged(contract):
    # Killed for silence with no job running (frozen in a fetch): what it held, including a job
    # the fetch handed over after it stopped reading, never began, so none is charged a run.
    worker = contract.worker(max_retries=0)
    contract.enqueue(worker, "reported", "handed over late")
    consumer = contract.consumer()
    reported, late = fetch(consumer, limit=2)
    contract.housekeeper.recover(contract.child_id, [], crashed=True, reason="heartbeat",
                                 held=[consumer.token(reported)])
    if contract.unreported_back_at_lease_end:
        assert contract.counts() == only(waiting=1, busy=1)
        contract.end_leases()
    assert contract.counts() == only(waiting=2)
    assert contract.dead() == []
    again = fetch(consumer, limit=2)
    again += fetch(consumer, limit=2)
    assert sorted((job.id, job.attempt) for job in again) == sorted(
        [(reported.id, 1), (late.id, contract.unreported_attempt)])


def test_finished_jobs_are_acked_not_run_again(contract):
    worker = contract.worker()
    contract.enqueue(worker, "finished", "held")
    consumer = contract.consumer()
    finished, held = fetch(consumer, limit=2)
    consumer.ack_later(finished)
    consumer.take_unsent_acks()                 # the child dies before it writes the ack
    contract.housekeeper.recover(
        contract.child_id, [], crashed=True, held=[consumer.token(held)],
        finished=[{"token": consumer.token(finished), "worker": worker.name}])
    [again] = fetch(consumer, limit=2)
    assert (again.id, again.attempt) == (held.id, 1)
    assert contract.dead() == []
    consumer.ack(again)
    assert contract.counts() == only()


# -- the inspector --------------------------------------------------------------------------

def test_stats_count_each_state_of_the_queue(contract):
    worker = contract.worker()
    contract.enqueue(worker, "retry", "dead", "w1", "w2")
    contract.enqueue(worker, "later", delay=HOUR)
    consumer = contract.consumer()
    consumer.retry(one(consumer), HOUR, ERROR)
    consumer.bury(one(consumer), ERROR)
    row = contract.row()
    assert {key: row[key] for key in STATES} == {
        "waiting": 2, "scheduled": 1, "retrying": 1, "dead": 1, "busy": 0}
    assert 0.0 <= row["latency"] < 60
    section = contract.inspector.stats()
    for key in ("waiting", "scheduled", "retrying", "dead"):
        assert section["totals"][key] == sum(q[key] for q in section["queues"]), key
    assert set(section["totals"]) >= {"processed", "failed"}


def test_depths_report_waiting_per_queue_and_totals_of_the_whole_backend(contract):
    busy, other, unused = contract.queue, contract.new_queue(), contract.new_queue()
    contract.enqueue(contract.worker(busy), "a", "b", "dead")
    contract.enqueue(contract.worker(other), "c")
    dead_before = contract.inspector.depths([busy])["totals"]["dead"]
    consumer = contract.consumer([busy])
    consumer.bury(one(consumer), ERROR)
    depths = contract.inspector.depths([busy, unused, other])
    assert {q: row["waiting"] for q, row in depths["queues"].items()} == {
        busy: 2, unused: 0, other: 1}
    assert all(row["latency"] >= 0.0 for row in depths["queues"].values())
    assert depths["totals"]["dead"] == dead_before + 1
    # Every queue's, as in stats, not only the queues named.
    totals = contract.inspector.stats()["totals"]
    assert depths["totals"] == {key: totals[key] for key in ("scheduled", "retrying", "dead")}
    assert contract.inspector.depths([unused])["totals"] == depths["totals"]


def test_health_and_the_stored_periodic_schedules(contract):
    worker = contract.worker()
    contract.registry.register_periodic(worker, "0 0 1 1 *", args={"k": 1})
    assert contract.housekeeper.tick(contract.state()) == []
    [listed] = [s for s in contract.inspector.schedules() if s["worker"] == worker.name]
    assert {k: listed[k] for k in ("cron", "args", "timezone", "last_run", "queue")} == {
        "cron": "0 0 1 1 *", "args": {"k": 1}, "timezone": "UTC", "last_run": None,
        "queue": contract.queue}
    assert listed["next_run"] > datetime.datetime.now(datetime.timezone.utc)
    assert listed["next_run"].utcoffset() is not None
    assert fetch(contract.consumer()) == [], "a tick from before the schedule existed"
    health = contract.inspector.health()
    assert health["version"] is None or isinstance(health["version"], str)
    assert isinstance(health["warnings"], list)


def test_run_schedule_sends_the_stored_job_now_and_the_ticks_go_on(contract):
    worker = contract.worker()
    contract.registry.register_periodic(worker, "0 0 1 1 *", args={"k": [1, "<b>"]})
    contract.housekeeper.tick(contract.state())
    [listed] = [s for s in contract.inspector.schedules() if s["worker"] == worker.name]
    job_id = contract.inspector.run_schedule(listed["key"])
    [job] = fetch(contract.consumer())
    assert (job.id, job.worker_name, job.args) == (job_id, worker.name, {"k": [1, "<b>"]})
    assert contract.inspector.run_schedule("no-such-schedule") is None
    [again] = [s for s in contract.inspector.schedules() if s["worker"] == worker.name]
    assert again["next_run"] == listed["next_run"] and again["last_run"] is None


def test_a_carried_trace_context_comes_back_with_the_job_and_none_by_default(contract):
    from jobrunner.job import encode_args
    worker = contract.worker()
    carrier = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    [traced] = worker.enqueuer.push(worker, contract.conn, [encode_args(worker.name, 1)],
                                    carrier=carrier)
    [plain] = worker.enqueuer.push(worker, contract.conn, [encode_args(worker.name, 2)])
    contract.committed()
    jobs = {job.id: job for job in fetch(contract.consumer(), limit=2)}
    assert jobs[traced].trace_context == carrier and jobs[traced].args == 1
    assert jobs[plain].trace_context is None

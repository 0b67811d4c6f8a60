"""Operator queries on a real Redis in Sidekiq's format: stats, processes, dead jobs."""

import json
import time

import pytest
import redis

import jobrunner
from jobrunner.backends.sidekiq import inspector as sidekiq_admin
from jobrunner.backends.sidekiq.backend import SidekiqBackend, SidekiqEnqueuer
from jobrunner.backends.sidekiq.housekeeper import SidekiqHousekeeper
from jobrunner.config import Settings
from jobrunner.job import ErrorInfo
from jobrunner.process.state import RunningJob, SupervisorState

IDENTITY = "adminhost:200:abcdefabcdef"
ERROR = ErrorInfo(error_class="RuntimeError", message="it broke")


class MailWorker(jobrunner.Worker):
    enqueuer = SidekiqEnqueuer
    queue = "mail"
    max_retries = 3

    def handle(self, args):
        pass


class ReportWorker(jobrunner.Worker):
    enqueuer = SidekiqEnqueuer
    queue = "reports"

    def handle(self, args):
        pass


@pytest.fixture
def backend(redis_url):
    registry = jobrunner.Registry()
    registry.register(MailWorker)
    registry.register(ReportWorker)
    return SidekiqBackend(Settings(redis_url=redis_url), registry)


@pytest.fixture
def conn(redis_url):
    client = sidekiq_admin.client(redis_url)
    yield client
    client.close()


@pytest.fixture
def consumer(backend):
    made = backend.consumer(["mail", "reports"], IDENTITY + ":201")
    yield made
    made.close()


@pytest.fixture
def housekeeper(redis_url, backend):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield SidekiqHousekeeper(client, IDENTITY, registry=backend.registry)
    client.close()


def one(consumer):
    jobs = consumer.fetch(0)
    assert len(jobs) == 1, jobs
    return jobs[0]


def queue_row(section, name):
    [row] = [q for q in section["queues"] if q["name"] == name]
    return {k: v for k, v in row.items() if k not in ("name", "latency")}


def bury(conn, consumer, *args_list, worker=MailWorker):
    """Enqueue and fail each job for good through the real consumer; returns the jobs."""
    worker.enqueue_batch(conn, list(args_list))
    jobs = []
    for _ in args_list:
        job = one(consumer)
        consumer.bury(job, ErrorInfo(error_class="ValueError", message=f"bad {job.args}"))
        jobs.append(job)
    return jobs


def test_stats_count_each_state_per_queue(conn, consumer, housekeeper):
    MailWorker.enqueue_batch(conn, ["retry", "dead", "running", "w1", "w2"])
    ReportWorker.enqueue_in(conn, 3600, "later")
    consumer.retry(one(consumer), 3600, ERROR)
    consumer.bury(one(consumer), ERROR)
    running = one(consumer)
    consumer.flush()
    housekeeper.beat(SupervisorState(
        identity=IDENTITY, hostname="adminhost", pid=200, started_at=1700000000.0,
        queues=["mail", "reports"], concurrency=2, children=(IDENTITY + ":201",),
        busy=(RunningJob(child_id=IDENTITY + ":201", job_id=running.id, worker="MailWorker",
                         queue="mail", started_at=1700000100.0),)))
    section = sidekiq_admin.stats(conn)
    assert queue_row(section, "mail") == {"waiting": 2, "scheduled": 0, "retrying": 1,
                                          "dead": 1, "busy": 1}
    # Only scheduled so far, so not yet in the `queues` set; listed all the same.
    assert conn.smembers("queues") == {"mail"}
    assert queue_row(section, "reports") == {"waiting": 0, "scheduled": 1, "retrying": 0,
                                             "dead": 0, "busy": 0}
    assert section["totals"] == {"waiting": 2, "scheduled": 1, "retrying": 1, "dead": 1,
                                 "busy": 1, "processed": 2, "failed": 2}
    [proc] = section["processes"]
    assert proc["identity"] == IDENTITY and proc["busy"] == 1 and proc["concurrency"] == 2
    assert proc["queues"] == ["mail", "reports"] and proc["quiet"] is False
    assert proc["running"] == [{"child": "201", "queue": "mail", "worker": "MailWorker",
                                "job_id": running.id, "run_at": 1700000100}]


def test_latency_is_now_minus_enqueued_at_of_the_oldest(conn):
    MailWorker.enqueue(conn, "old")
    MailWorker.enqueue(conn, "new")
    oldest = json.loads(conn.lindex("queue:mail", -1))["enqueued_at"]
    [row] = sidekiq_admin.stats(conn, now=oldest + 90.5)["queues"]
    assert row["latency"] == 90.5
    conn.delete("queue:mail")
    [row] = sidekiq_admin.stats(conn)["queues"]
    assert row["latency"] == 0.0


def test_expired_processes_are_pruned_like_sidekiqs_process_set(conn, housekeeper):
    housekeeper.beat(SupervisorState(identity=IDENTITY, hostname="adminhost", pid=200,
                                     started_at=1700000000.0, queues=["mail"], concurrency=1))
    conn.sadd("processes", "gonehost:1:000000000000")     # its hash has expired
    assert [p["identity"] for p in sidekiq_admin.processes(conn)] == [IDENTITY]
    assert conn.smembers("processes") == {IDENTITY}


def test_dead_list_shows_what_died_and_why(conn, consumer):
    first, second = bury(conn, consumer, {"n": 1}, {"n": 2})
    conn.zadd("dead", {"{not json": time.time() + 10})      # Sidekiq keeps such text raw
    jobs = sidekiq_admin.dead_jobs(conn)
    assert [j["id"] for j in jobs] == [None, second.id, first.id]    # newest first
    assert jobs[0]["args"] == ["{not json"] and "invalid JSON" in jobs[0]["error_message"]
    entry = jobs[2]
    assert entry == {"backend": "sidekiq", "queue": "mail", "id": first.id, "msg_id": None,
                     "worker": "MailWorker", "args": [{"n": 1}], "error_class": "ValueError",
                     "error_message": "bad {'n': 1}", "attempts": 1,
                     "died_at": entry["died_at"]}
    assert abs(entry["died_at"] - time.time()) < 60
    assert [j["id"] for j in sidekiq_admin.dead_jobs(conn, limit=2)] == [None, second.id]
    assert [j["id"] for j in sidekiq_admin.dead_jobs(conn, queue="mail")] == [second.id, first.id]
    assert [j["id"] for j in sidekiq_admin.dead_jobs(conn, ids=[first.id])] == [first.id]


def test_attempts_count_every_run(conn, consumer):
    MailWorker.enqueue(conn, "x")
    job = one(consumer)
    consumer.retry(job, 0, ERROR)
    item = json.loads(conn.zrange("retry", 0, 0)[0])
    conn.delete("retry")
    item["retry_count"] = 3                              # as after its fourth failed run
    conn.zadd("dead", {json.dumps(item): time.time()})
    assert sidekiq_admin.dead_jobs(conn)[0]["attempts"] == 4


def test_retry_pushes_the_job_back_with_a_fresh_start(conn, consumer):
    MailWorker.enqueue(conn, {"k": 1})
    job = one(consumer)
    consumer.retry(job, 0, ERROR)          # first failure, then its last one
    raw = conn.zrange("retry", 0, 0)[0]
    conn.delete("retry")
    conn.lpush("queue:mail", raw)
    consumer.bury(one(consumer), ERROR)
    dead = json.loads(conn.zrange("dead", 0, 0)[0])
    assert dead["retry_count"] == 1 and "retried_at" in dead
    conn.srem("queues", "mail")
    before = time.time()
    retried, skipped = sidekiq_admin.retry_dead(conn, ids=[job.id])
    assert [e["id"] for e in retried] == [job.id] and skipped == []
    assert conn.zcard("dead") == 0 and conn.smembers("queues") == {"mail"}
    pushed = json.loads(conn.lindex("queue:mail", 0))
    assert pushed["enqueued_at"] >= before
    assert "retry_count" not in pushed and "retried_at" not in pushed
    kept = {k: v for k, v in dead.items() if k not in ("retry_count", "retried_at", "enqueued_at")}
    assert {k: pushed[k] for k in kept} == kept           # jid, created_at, errors... unchanged
    again = one(consumer)
    assert (again.id, again.args, again.attempt) == (job.id, {"k": 1}, 1)


def test_retry_keeps_unknown_keys_and_pushes_once(conn, consumer):
    conn.lpush("queue:mail", json.dumps({"class": "MailWorker", "args": [1], "queue": "mail",
                                         "jid": "a" * 24, "retry": 3, "tags": ["t"],
                                         "custom": {"x": 1}}))
    consumer.bury(one(consumer), ERROR)
    assert [e["id"] for e in sidekiq_admin.retry_dead(conn, ids=["a" * 24])[0]] == ["a" * 24]
    assert sidekiq_admin.retry_dead(conn, ids=["a" * 24]) == ([], [])
    assert conn.llen("queue:mail") == 1
    pushed = json.loads(conn.lindex("queue:mail", 0))
    assert pushed["tags"] == ["t"] and pushed["custom"] == {"x": 1} and pushed["retry"] == 3


def test_retry_all_skips_what_cannot_run(conn, consumer):
    bury(conn, consumer, "a")
    bury(conn, consumer, "b", worker=ReportWorker)
    conn.zadd("dead", {"{not json": time.time()})
    retried, skipped = sidekiq_admin.retry_dead(conn, queue="reports")
    assert [e["args"] for e in retried] == [["b"]] and skipped == []
    retried, skipped = sidekiq_admin.retry_dead(conn)
    assert [e["args"] for e in retried] == [["a"]]
    assert [e["args"] for e in skipped] == [["{not json"]] and skipped[0]["reason"]
    assert conn.zrange("dead", 0, -1) == ["{not json"]
    assert conn.llen("queue:mail") == conn.llen("queue:reports") == 1


def test_delete_removes_dead_jobs(conn, consumer):
    first, second = bury(conn, consumer, 1, 2)
    conn.zadd("dead", {"{not json": time.time()})
    assert [e["id"] for e in sidekiq_admin.delete_dead(conn, ids=[first.id])] == [first.id]
    assert [e["id"] for e in sidekiq_admin.delete_dead(conn)] == [None, second.id]
    assert conn.zcard("dead") == 0

"""Operator queries on a real pgmq and a real Redis in Sidekiq's format: stats, dead jobs."""

import datetime
import json
import time
import uuid

import psycopg2
import pytest
import redis

import jobrunner
from jobrunner.backends.pgmq import inspector as pgmq_admin
from jobrunner.backends.pgmq.backend import PgmqBackend
from jobrunner.backends.sidekiq import inspector as sidekiq_admin
from jobrunner.backends.sidekiq.backend import SidekiqBackend
from jobrunner.backends.sidekiq.housekeeper import SidekiqHousekeeper
from jobrunner.config import Settings
from jobrunner.job import ErrorInfo
from jobrunner.ops import admin
from jobrunner.ops import jobs as ops_jobs
from jobrunner.process.state import RunningJob, SupervisorState

ERROR = ErrorInfo(error_class="RuntimeError", message="it broke")


def one(consumer):
    jobs = consumer.fetch(0)
    assert len(jobs) == 1, jobs
    return jobs[0]


def fail_for_good(consumer, count):
    """Fetch ``count`` jobs and bury each through the real consumer; returns the jobs."""
    jobs = []
    for _ in range(count):
        job = one(consumer)
        consumer.bury(job, ErrorInfo(error_class="ValueError", message=f"bad {job.args}"))
        jobs.append(job)
    return jobs


# -- pgmq: a fresh queue per test (the database is the run's, shared by every test) ----------

def make_worker(queue, **options):
    options.setdefault("enqueuer", jobrunner.PgEnqueuer)
    options.setdefault("queue", queue)
    options.setdefault("max_retries", 3)
    options["handle"] = lambda self, args: None
    return type("PgAdminWorker", (jobrunner.Worker,), options)


@pytest.fixture
def consumer_for(pg_dsn):
    made = []

    def make(worker):
        registry = jobrunner.Registry()
        registry.register(worker)
        consumer = PgmqBackend(Settings(pg_dsn=pg_dsn), registry).consumer([worker.queue], "t")
        made.append(consumer)
        return consumer

    yield make
    for consumer in made:
        consumer.close()


def enqueue(conn, worker, *args_list):
    """Enqueue on pgmq and commit."""
    ids = worker.enqueue_batch(conn, list(args_list))
    conn.commit()
    return ids


def bury_in_pgmq(conn, consumer_for, worker, *args_list):
    enqueue(conn, worker, *args_list)
    return fail_for_good(consumer_for(worker), len(args_list))


# -- Sidekiq: fixed queue names (the test's Redis database is emptied before and after) -------

IDENTITY = "adminhost:200:abcdefabcdef"


class MailWorker(jobrunner.Worker):
    enqueuer = jobrunner.SidekiqEnqueuer
    queue = "mail"
    max_retries = 3

    def handle(self, args):
        pass


class ReportWorker(jobrunner.Worker):
    enqueuer = jobrunner.SidekiqEnqueuer
    queue = "reports"

    def handle(self, args):
        pass


def sidekiq_backend_on(redis_url):
    registry = jobrunner.Registry()
    registry.register(MailWorker)
    registry.register(ReportWorker)
    return SidekiqBackend(Settings(redis_url=redis_url), registry)


def bury_in_redis(conn, consumer, *args_list, worker=MailWorker):
    worker.enqueue_batch(conn, list(args_list))
    return fail_for_good(consumer, len(args_list))


# -- both backends -----------------------------------------------------------------------------
# The dead list is one scenario on both. The other tests call each backend's own functions, whose
# arguments and results differ (pgmq acts on msg_ids per queue, Sidekiq on jids across queues),
# as do the states they count, so they are grouped by backend below.

class PgmqDead:
    """pgmq's side of the dead-list scenario: its worker archives successes, which stay there."""

    name, admin = "pgmq", pgmq_admin

    def __init__(self, conn, queue, consumer_for):
        self.conn, self.queue = conn, queue
        self.worker = make_worker(queue, success_action="archive")
        self.consumer = consumer_for(self.worker)

    def succeed(self, args):
        enqueue(self.conn, self.worker, args)
        self.consumer.ack(one(self.consumer))

    def bury(self, *args_list):
        enqueue(self.conn, self.worker, *args_list)
        return fail_for_good(self.consumer, len(args_list))

    def listed_as(self, job, args):
        """How the dead list names ``job``: its msg_id too, and ``args`` as they were sent."""
        return {"backend": "pgmq", "queue": self.queue, "id": job.id, "msg_id": job.receipt[1],
                "worker": "PgAdminWorker", "args": args}

    def close(self):
        pass                    # the fixtures close the connection and the consumer


class SidekiqDead:
    """Sidekiq's side of the dead-list scenario: MailWorker on queue ``mail``."""

    name, admin, queue = "sidekiq", sidekiq_admin, "mail"

    def __init__(self, redis_url):
        self.conn = sidekiq_admin.client(redis_url)
        backend = sidekiq_backend_on(redis_url)
        self.consumer = backend.consumer(["mail", "reports"], IDENTITY + ":201")

    def succeed(self, args):
        MailWorker.enqueue(self.conn, args)
        self.consumer.ack(one(self.consumer))

    def bury(self, *args_list):
        return bury_in_redis(self.conn, self.consumer, *args_list)

    def listed_as(self, job, args):
        """How the dead list names ``job``: no msg_id, ``args`` in Sidekiq's list."""
        return {"backend": "sidekiq", "queue": "mail", "id": job.id, "msg_id": None,
                "worker": "MailWorker", "args": [args]}

    def close(self):
        self.consumer.close()
        self.conn.close()


@pytest.fixture(params=["pgmq", "sidekiq"])
def backend(request):
    if request.param == "pgmq":
        side = PgmqDead(request.getfixturevalue("pg_conn"), request.getfixturevalue("queue_name"),
                        request.getfixturevalue("consumer_for"))
    else:
        side = SidekiqDead(request.getfixturevalue("redis_url"))
    yield side
    side.close()


def test_dead_list_shows_what_died_and_why(backend):
    backend.succeed("fine")         # kept in pgmq's archive, gone from Redis: not dead either way
    first, second = backend.bury({"n": 1}, {"n": 2})
    jobs = backend.admin.dead_jobs(backend.conn, queue=backend.queue)
    assert [j["id"] for j in jobs] == [second.id, first.id]      # newest first
    entry = jobs[1]
    assert entry == dict(backend.listed_as(first, {"n": 1}), error_class="ValueError",
                         error_message="bad {'n': 1}", attempts=1, died_at=entry["died_at"],
                         state="dead", failed_at=entry["failed_at"], run_at=None)
    assert abs(entry["died_at"] - time.time()) < 60
    assert backend.admin.dead_jobs(backend.conn, queue=backend.queue, limit=1) == jobs[:1]
    by_id = backend.admin.dead_jobs(backend.conn, ids=[first.id])
    assert [j["id"] for j in by_id] == [first.id]
    assert backend.admin.dead_jobs(backend.conn, queue="no_such_queue") == []


# -- pgmq only ---------------------------------------------------------------------------------

def stats_of(conn, queue):
    [entry] = [q for q in pgmq_admin.stats(conn)["queues"] if q["name"] == queue]
    return entry


def counts(entry):
    return {k: entry[k] for k in ("waiting", "scheduled", "retrying", "dead", "busy")}


@pytest.fixture
def other_queue(pg_dsn):
    """A second fresh queue, dropped after the test."""
    name = "t_" + uuid.uuid4().hex[:12]
    yield name
    with psycopg2.connect(pg_dsn) as drop, drop.cursor() as cur:
        cur.execute("SELECT pgmq.drop_queue(%s)", (name,))
    drop.close()


class TestPgmqOnly:
    """States told apart by read_ct and headers, msg_ids, and retry/delete per queue."""

    def test_stats_count_each_state(self, pg_conn, queue_name, consumer_for):
        worker = make_worker(queue_name, success_action="archive")
        enqueue(pg_conn, worker, "ok", "retry", "dead", "running", "w1", "w2")
        worker.enqueue_in(pg_conn, 3600, "later")
        pg_conn.commit()
        consumer = consumer_for(worker)
        consumer.ack(one(consumer))                         # archived success: not dead
        consumer.retry(one(consumer), 3600, ERROR)
        consumer.bury(one(consumer), ERROR)
        one(consumer)                                       # leased, not settled: busy
        entry = stats_of(pg_conn, queue_name)
        assert counts(entry) == {"waiting": 2, "scheduled": 1, "retrying": 1, "dead": 1,
                                 "busy": 1}
        assert 0 <= entry["latency"] < 60

    def test_a_retried_job_is_busy_again_once_read(self, pg_conn, queue_name, consumer_for):
        worker = make_worker(queue_name)
        enqueue(pg_conn, worker, "x")
        consumer = consumer_for(worker)
        consumer.retry(one(consumer), 0, ERROR)             # backoff over: visible again
        assert counts(stats_of(pg_conn, queue_name))["waiting"] == 1
        again = one(consumer)
        assert again.attempt == 2
        assert counts(stats_of(pg_conn, queue_name)) == {
            "waiting": 0, "scheduled": 0, "retrying": 0, "dead": 0, "busy": 1}

    def test_latency_is_the_age_of_the_oldest_visible_job(self, pg_conn, queue_name):
        worker = make_worker(queue_name)
        past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=120)
        worker.enqueue_at(pg_conn, past, "late")            # due two minutes ago
        worker.enqueue(pg_conn, "fresh")
        pg_conn.commit()
        assert 119 <= stats_of(pg_conn, queue_name)["latency"] < 180

    def test_totals_add_up_and_leave_no_transaction_open(self, pg_conn, queue_name):
        enqueue(pg_conn, make_worker(queue_name), 1, 2)
        section = pgmq_admin.stats(pg_conn)
        assert section["totals"]["waiting"] >= 2
        assert section["totals"]["processed"] is None and section["totals"]["failed"] is None
        assert isinstance(section["processes"], list) and section["processes_note"] is None
        assert pg_conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE

    def test_dead_jobs_are_found_by_msg_id_or_job_id(self, pg_conn, queue_name, consumer_for):
        first, second = bury_in_pgmq(pg_conn, consumer_for, make_worker(queue_name),
                                     {"n": 1}, {"n": 2})
        by_msg = pgmq_admin.dead_jobs(pg_conn, queue=queue_name, ids=[str(second.receipt[1])])
        assert [j["id"] for j in by_msg] == [second.id]
        by_id = pgmq_admin.dead_jobs(pg_conn, ids=[first.id])
        assert [j["msg_id"] for j in by_id] == [first.receipt[1]]

    def test_retry_sends_the_job_again_with_fresh_attempts(self, pg_conn, queue_name,
                                                           consumer_for):
        worker = make_worker(queue_name)
        [job] = bury_in_pgmq(pg_conn, consumer_for, worker, {"k": [1, 2]})
        moved = pgmq_admin.retry_dead(pg_conn, queue_name, [job.receipt[1]])
        assert list(moved) == [job.receipt[1]] and moved[job.receipt[1]] != job.receipt[1]
        assert pgmq_admin.dead_jobs(pg_conn, queue=queue_name) == []
        assert counts(stats_of(pg_conn, queue_name))["waiting"] == 1
        again = one(consumer_for(worker))
        assert (again.id, again.args, again.attempt) == (job.id, {"k": [1, 2]}, 1)
        assert again.receipt[1] == moved[job.receipt[1]]

    def test_retry_keeps_producer_headers_and_drops_ours(self, pg_conn, queue_name,
                                                         consumer_for):
        worker = make_worker(queue_name)
        body = {"metadata": {"id": "job-1", "worker_name": worker.name}, "args": 5}
        with pg_conn.cursor() as cur:   # as pgmq's own client sends, with a header of its own
            cur.execute("SELECT pgmq.create(%s); SELECT pgmq.send(%s, %s::jsonb, %s::jsonb)",
                        (queue_name, queue_name, json.dumps(body), '{"x-trace": "abc"}'))
        pg_conn.commit()
        consumer = consumer_for(worker)
        consumer.bury(one(consumer), ERROR)
        pgmq_admin.retry_dead(pg_conn, queue_name, [1])
        with pg_conn.cursor() as cur:
            cur.execute(f'SELECT message, headers FROM pgmq."q_{queue_name}"')
            assert cur.fetchall() == [(body, {"x-trace": "abc"})]
        pg_conn.rollback()

    def test_retry_and_delete_act_once_and_only_on_dead_rows(self, pg_conn, queue_name,
                                                             consumer_for):
        worker = make_worker(queue_name, success_action="archive")
        enqueue(pg_conn, worker, "fine")
        consumer = consumer_for(worker)
        done = one(consumer)
        consumer.ack(done)
        [dead] = bury_in_pgmq(pg_conn, consumer_for, worker, "x")
        msg_ids = [done.receipt[1], dead.receipt[1]]
        assert pgmq_admin.retry_dead(pg_conn, queue_name, msg_ids) == {dead.receipt[1]: 3}
        assert pgmq_admin.retry_dead(pg_conn, queue_name, msg_ids) == {}
        dead_again = one(consumer)                            # the retried one fails again
        consumer.bury(dead_again, ERROR)
        deleted = pgmq_admin.delete_dead(pg_conn, queue_name,
                                         [done.receipt[1], dead_again.receipt[1]])
        assert deleted == [dead_again.receipt[1]]
        with pg_conn.cursor() as cur:
            cur.execute(f'SELECT msg_id FROM pgmq."a_{queue_name}"')
            assert cur.fetchall() == [(done.receipt[1],)]     # the archived success stays
        pg_conn.rollback()

    def test_dead_action_refuses_a_msg_id_dead_in_two_queues(self, pg_dsn, pg_conn, queue_name,
                                                              other_queue, consumer_for):
        [a] = bury_in_pgmq(pg_conn, consumer_for, make_worker(queue_name), "a")
        [b] = bury_in_pgmq(pg_conn, consumer_for, make_worker(other_queue), "b")
        assert a.receipt[1] == b.receipt[1] == 1
        with admin.Session({"pg_dsn": pg_dsn}, only="pgmq") as session:
            result = ops_jobs.dead_action(session, "delete", ids=["1"])
            assert result["ambiguous"] == ["1"] and result["done"] == []
            result = ops_jobs.dead_action(session, "retry", ids=["1"], queue=other_queue)
            assert [(j["queue"], j["id"]) for j in result["done"]] == [(other_queue, b.id)]
            result = ops_jobs.dead_action(session, "delete", ids=[a.id, "nope"])
            assert [j["id"] for j in result["done"]] == [a.id]
            assert result["not_found"] == ["nope"]
        assert pgmq_admin.dead_jobs(pg_conn, queue=queue_name) == []


# -- Sidekiq only ------------------------------------------------------------------------------

def queue_row(section, name):
    [row] = [q for q in section["queues"] if q["name"] == name]
    return {k: v for k, v in row.items() if k not in ("name", "latency")}


class TestSidekiqOnly:
    """The process set, raw (non-JSON) dead entries, and retry/delete by jid across queues."""

    @pytest.fixture
    def conn(self, redis_url):
        client = sidekiq_admin.client(redis_url)
        yield client
        client.close()

    @pytest.fixture
    def consumer(self, redis_url):
        made = sidekiq_backend_on(redis_url).consumer(["mail", "reports"], IDENTITY + ":201")
        yield made
        made.close()

    @pytest.fixture
    def housekeeper(self, redis_url):
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        yield SidekiqHousekeeper(client, IDENTITY, registry=sidekiq_backend_on(redis_url).registry)
        client.close()

    def test_stats_count_each_state_per_queue(self, conn, consumer, housekeeper):
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
                                              "dead": 1, "busy": 1, "paused": False}
        # Only scheduled so far, so not yet in the `queues` set; listed all the same.
        assert conn.smembers("queues") == {"mail"}
        assert queue_row(section, "reports") == {"waiting": 0, "scheduled": 1, "retrying": 0,
                                                 "dead": 0, "busy": 0, "paused": False}
        assert section["totals"] == {"waiting": 2, "scheduled": 1, "retrying": 1, "dead": 1,
                                     "busy": 1, "processed": 2, "failed": 2}
        [proc] = section["processes"]
        assert proc["identity"] == IDENTITY and proc["busy"] == 1 and proc["concurrency"] == 2
        assert proc["queues"] == ["mail", "reports"] and proc["quiet"] is False
        assert proc["running"] == [{"child": "201", "queue": "mail", "worker": "MailWorker",
                                    "job_id": running.id, "args": [running.args],
                                    "run_at": 1700000100}]

    def test_latency_is_now_minus_enqueued_at_of_the_oldest(self, conn):
        MailWorker.enqueue(conn, "old")
        MailWorker.enqueue(conn, "new")
        oldest = json.loads(conn.lindex("queue:mail", -1))["enqueued_at"]
        [row] = sidekiq_admin.stats(conn, now=oldest + 90.5)["queues"]
        assert row["latency"] == 90.5
        conn.delete("queue:mail")
        [row] = sidekiq_admin.stats(conn)["queues"]
        assert row["latency"] == 0.0

    def test_expired_processes_are_pruned_like_sidekiqs_process_set(self, conn, housekeeper):
        housekeeper.beat(SupervisorState(identity=IDENTITY, hostname="adminhost", pid=200,
                                         started_at=1700000000.0, queues=["mail"],
                                         concurrency=1))
        conn.sadd("processes", "gonehost:1:000000000000")     # its hash has expired
        assert [p["identity"] for p in sidekiq_admin.processes(conn)] == [IDENTITY]
        assert conn.smembers("processes") == {IDENTITY}

    def test_a_dead_entry_that_is_not_json_is_listed_raw(self, conn, consumer):
        first, second = bury_in_redis(conn, consumer, {"n": 1}, {"n": 2})
        conn.zadd("dead", {"{not json": time.time() + 10})      # Sidekiq keeps such text raw
        jobs = sidekiq_admin.dead_jobs(conn)
        assert [j["id"] for j in jobs] == [None, second.id, first.id]    # newest first
        assert jobs[0]["args"] == ["{not json"] and "invalid JSON" in jobs[0]["error_message"]
        assert [j["id"] for j in sidekiq_admin.dead_jobs(conn, limit=2)] == [None, second.id]
        assert [j["id"] for j in sidekiq_admin.dead_jobs(conn, queue="mail")] == \
            [second.id, first.id]
        assert [j["id"] for j in sidekiq_admin.dead_jobs(conn, ids=[first.id])] == [first.id]

    def test_attempts_count_every_run(self, conn, consumer):
        MailWorker.enqueue(conn, "x")
        job = one(consumer)
        consumer.retry(job, 0, ERROR)
        item = json.loads(conn.zrange("retry", 0, 0)[0])
        conn.delete("retry")
        item["retry_count"] = 3                              # as after its fourth failed run
        conn.zadd("dead", {json.dumps(item): time.time()})
        assert sidekiq_admin.dead_jobs(conn)[0]["attempts"] == 4

    def test_retry_pushes_the_job_back_with_a_fresh_start(self, conn, consumer):
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
        kept = {k: v for k, v in dead.items()
                if k not in ("retry_count", "retried_at", "enqueued_at")}
        assert {k: pushed[k] for k in kept} == kept           # jid, created_at, errors... unchanged
        again = one(consumer)
        assert (again.id, again.args, again.attempt) == (job.id, {"k": 1}, 1)

    def test_retry_keeps_unknown_keys_and_pushes_once(self, conn, consumer):
        conn.lpush("queue:mail", json.dumps({"class": "MailWorker", "args": [1], "queue": "mail",
                                             "jid": "a" * 24, "retry": 3, "tags": ["t"],
                                             "custom": {"x": 1}}))
        consumer.bury(one(consumer), ERROR)
        assert [e["id"] for e in sidekiq_admin.retry_dead(conn, ids=["a" * 24])[0]] == ["a" * 24]
        assert sidekiq_admin.retry_dead(conn, ids=["a" * 24]) == ([], [])
        assert conn.llen("queue:mail") == 1
        pushed = json.loads(conn.lindex("queue:mail", 0))
        assert pushed["tags"] == ["t"] and pushed["custom"] == {"x": 1} and pushed["retry"] == 3

    def test_retry_all_skips_what_cannot_run(self, conn, consumer):
        bury_in_redis(conn, consumer, "a")
        bury_in_redis(conn, consumer, "b", worker=ReportWorker)
        conn.zadd("dead", {"{not json": time.time()})
        retried, skipped = sidekiq_admin.retry_dead(conn, queue="reports")
        assert [e["args"] for e in retried] == [["b"]] and skipped == []
        retried, skipped = sidekiq_admin.retry_dead(conn)
        assert [e["args"] for e in retried] == [["a"]]
        assert [e["args"] for e in skipped] == [["{not json"]] and skipped[0]["reason"]
        assert conn.zrange("dead", 0, -1) == ["{not json"]
        assert conn.llen("queue:mail") == conn.llen("queue:reports") == 1

    def test_delete_removes_dead_jobs(self, conn, consumer):
        first, second = bury_in_redis(conn, consumer, 1, 2)
        conn.zadd("dead", {"{not json": time.time()})
        assert [e["id"] for e in sidekiq_admin.delete_dead(conn, ids=[first.id])] == [first.id]
        assert [e["id"] for e in sidekiq_admin.delete_dead(conn)] == [None, second.id]
        assert conn.zcard("dead") == 0

"""Operator queries on a real pgmq: stats by state, dead jobs listed, retried and deleted."""

import datetime
import json
import uuid

import psycopg2
import pytest

import jobrunner
from jobrunner.ops import admin
from jobrunner.backends.pgmq import inspector as pgmq_admin
from jobrunner.backends.pgmq.backend import PgmqBackend
from jobrunner.config import Settings
from jobrunner.job import ErrorInfo

ERROR = ErrorInfo(error_class="RuntimeError", message="it broke")


def make_worker(queue, **options):
    options.setdefault("enqueuer", jobrunner.PgEnqueuer)
    options.setdefault("queue", queue)
    options.setdefault("max_retries", 3)
    options["handle"] = lambda self, args: None
    return type("PgAdminWorker", (jobrunner.Worker,), options)


@pytest.fixture
def conn(pg_dsn):
    connection = psycopg2.connect(pg_dsn)
    yield connection
    connection.rollback()
    connection.close()


@pytest.fixture
def other_queue(pg_dsn):
    """A second fresh queue, dropped after the test."""
    name = "t_" + uuid.uuid4().hex[:12]
    yield name
    with psycopg2.connect(pg_dsn) as drop, drop.cursor() as cur:
        cur.execute("SELECT pgmq.drop_queue(%s)", (name,))
    drop.close()


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


def one(consumer):
    jobs = consumer.fetch(0)
    assert len(jobs) == 1, jobs
    return jobs[0]


def enqueue(conn, worker, *args_list):
    ids = worker.enqueue_batch(conn, list(args_list))
    conn.commit()
    return ids


def stats_of(conn, queue):
    [entry] = [q for q in pgmq_admin.stats(conn)["queues"] if q["name"] == queue]
    return entry


def counts(entry):
    return {k: entry[k] for k in ("waiting", "scheduled", "retrying", "dead", "busy")}


def test_stats_count_each_state(conn, queue_name, consumer_for):
    worker = make_worker(queue_name, success_action="archive")
    enqueue(conn, worker, "ok", "retry", "dead", "running", "w1", "w2")
    worker.enqueue_in(conn, 3600, "later")
    conn.commit()
    consumer = consumer_for(worker)
    consumer.ack(one(consumer))                         # archived success: not dead
    consumer.retry(one(consumer), 3600, ERROR)
    consumer.bury(one(consumer), ERROR)
    one(consumer)                                       # leased, not settled: busy
    entry = stats_of(conn, queue_name)
    assert counts(entry) == {"waiting": 2, "scheduled": 1, "retrying": 1, "dead": 1, "busy": 1}
    assert 0 <= entry["latency"] < 60


def test_a_retried_job_is_busy_again_once_read(conn, queue_name, consumer_for):
    worker = make_worker(queue_name)
    enqueue(conn, worker, "x")
    consumer = consumer_for(worker)
    consumer.retry(one(consumer), 0, ERROR)             # backoff over: visible again
    assert counts(stats_of(conn, queue_name))["waiting"] == 1
    again = one(consumer)
    assert again.attempt == 2
    assert counts(stats_of(conn, queue_name)) == {
        "waiting": 0, "scheduled": 0, "retrying": 0, "dead": 0, "busy": 1}


def test_latency_is_the_age_of_the_oldest_visible_job(conn, queue_name):
    worker = make_worker(queue_name)
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=120)
    worker.enqueue_at(conn, past, "late")               # due two minutes ago
    worker.enqueue(conn, "fresh")
    conn.commit()
    assert 119 <= stats_of(conn, queue_name)["latency"] < 180


def test_totals_add_up_and_pgmq_lists_no_processes(conn, queue_name):
    enqueue(conn, make_worker(queue_name), 1, 2)
    section = pgmq_admin.stats(conn)
    assert section["totals"]["waiting"] >= 2
    assert section["totals"]["processed"] is None and section["totals"]["failed"] is None
    assert section["processes"] == [] and "pgmq" in section["processes_note"]
    assert conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE


def bury(conn, consumer_for, worker, *args_list):
    """Enqueue and fail each job for good through the real consumer; returns the jobs."""
    ids = enqueue(conn, worker, *args_list)
    consumer = consumer_for(worker)
    jobs = []
    for _ in ids:
        job = one(consumer)
        consumer.bury(job, ErrorInfo(error_class="ValueError", message=f"bad {job.args}"))
        jobs.append(job)
    return jobs


def test_dead_list_shows_what_died_and_why(conn, queue_name, consumer_for):
    worker = make_worker(queue_name, success_action="archive")
    enqueue(conn, worker, "fine")
    consumer = consumer_for(worker)
    consumer.ack(one(consumer))
    first, second = bury(conn, consumer_for, worker, {"n": 1}, {"n": 2})
    jobs = pgmq_admin.dead_jobs(conn, queue=queue_name)
    assert [j["id"] for j in jobs] == [second.id, first.id]      # newest first
    entry = jobs[1]
    assert entry == {"backend": "pgmq", "queue": queue_name, "id": first.id,
                     "msg_id": first.receipt[1], "worker": "PgAdminWorker", "args": {"n": 1},
                     "error_class": "ValueError", "error_message": "bad {'n': 1}",
                     "attempts": 1, "died_at": entry["died_at"]}
    assert abs(entry["died_at"] - datetime.datetime.now().timestamp()) < 60
    assert pgmq_admin.dead_jobs(conn, queue=queue_name, limit=1) == jobs[:1]
    by_msg = pgmq_admin.dead_jobs(conn, queue=queue_name, ids=[str(second.receipt[1])])
    assert [j["id"] for j in by_msg] == [second.id]
    by_id = pgmq_admin.dead_jobs(conn, ids=[first.id])
    assert [j["msg_id"] for j in by_id] == [first.receipt[1]]
    assert pgmq_admin.dead_jobs(conn, queue="no_such_queue") == []


def test_retry_sends_the_job_again_with_fresh_attempts(conn, queue_name, consumer_for):
    worker = make_worker(queue_name)
    [job] = bury(conn, consumer_for, worker, {"k": [1, 2]})
    moved = pgmq_admin.retry_dead(conn, queue_name, [job.receipt[1]])
    assert list(moved) == [job.receipt[1]] and moved[job.receipt[1]] != job.receipt[1]
    assert pgmq_admin.dead_jobs(conn, queue=queue_name) == []
    assert counts(stats_of(conn, queue_name))["waiting"] == 1
    again = one(consumer_for(worker))
    assert (again.id, again.args, again.attempt) == (job.id, {"k": [1, 2]}, 1)
    assert again.receipt[1] == moved[job.receipt[1]]


def test_retry_keeps_producer_headers_and_drops_ours(conn, queue_name, consumer_for):
    worker = make_worker(queue_name)
    body = {"metadata": {"id": "job-1", "worker_name": worker.name}, "args": 5}
    with conn.cursor() as cur:      # as pgmq's own client sends, with a header of its own
        cur.execute("SELECT pgmq.create(%s); SELECT pgmq.send(%s, %s::jsonb, %s::jsonb)",
                    (queue_name, queue_name, json.dumps(body), '{"x-trace": "abc"}'))
    conn.commit()
    consumer = consumer_for(worker)
    consumer.bury(one(consumer), ERROR)
    pgmq_admin.retry_dead(conn, queue_name, [1])
    with conn.cursor() as cur:
        cur.execute(f'SELECT message, headers FROM pgmq."q_{queue_name}"')
        assert cur.fetchall() == [(body, {"x-trace": "abc"})]
    conn.rollback()


def test_retry_and_delete_act_once_and_only_on_dead_rows(conn, queue_name, consumer_for):
    worker = make_worker(queue_name, success_action="archive")
    enqueue(conn, worker, "fine")
    consumer = consumer_for(worker)
    done = one(consumer)
    consumer.ack(done)
    [dead] = bury(conn, consumer_for, worker, "x")
    msg_ids = [done.receipt[1], dead.receipt[1]]
    assert pgmq_admin.retry_dead(conn, queue_name, msg_ids) == {dead.receipt[1]: 3}
    assert pgmq_admin.retry_dead(conn, queue_name, msg_ids) == {}
    dead_again = one(consumer)                            # the retried one fails again
    consumer.bury(dead_again, ERROR)
    assert pgmq_admin.delete_dead(conn, queue_name, [done.receipt[1], dead_again.receipt[1]]) \
        == [dead_again.receipt[1]]
    with conn.cursor() as cur:
        cur.execute(f'SELECT msg_id FROM pgmq."a_{queue_name}"')
        assert cur.fetchall() == [(done.receipt[1],)]     # the archived success stays
    conn.rollback()


def test_dead_action_refuses_a_msg_id_dead_in_two_queues(pg_dsn, conn, queue_name, other_queue,
                                                          consumer_for):
    [a] = bury(conn, consumer_for, make_worker(queue_name), "a")
    [b] = bury(conn, consumer_for, make_worker(other_queue), "b")
    assert a.receipt[1] == b.receipt[1] == 1
    with admin.Session({"pg_dsn": pg_dsn}, only="pgmq") as session:
        result = admin.dead_action(session, "delete", ids=["1"])
        assert result["ambiguous"] == ["1"] and result["done"] == []
        result = admin.dead_action(session, "retry", ids=["1"], queue=other_queue)
        assert [(j["queue"], j["id"]) for j in result["done"]] == [(other_queue, b.id)]
        result = admin.dead_action(session, "delete", ids=[a.id, "nope"])
        assert [j["id"] for j in result["done"]] == [a.id]
        assert result["not_found"] == ["nope"]
    assert pgmq_admin.dead_jobs(conn, queue=queue_name) == []

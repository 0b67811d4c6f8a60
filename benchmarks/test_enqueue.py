"""Enqueue speed, one job per call and in batches, next to the raw driver doing the same write.

The raw loops write the very JSON a jobrunner enqueue writes (built once, outside the timing),
so a ratio measures what jobrunner adds to the write, not a difference in payload size.
"""

import time

import pytest

import jobrunner
from jobrunner.backends.pgmq import envelope_texts
from jobrunner.backends.sidekiq_payload import client_payloads
from jobrunner.job import encode_args, new_job_id

BATCH = 100
BODY = {"user_id": 12345, "action": "welcome"}


class PgBench(jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer
    queue = "bench_enqueue"

    def handle(self, args):
        pass


class RedisBench(jobrunner.Worker):
    enqueuer = jobrunner.SidekiqEnqueuer
    queue = "bench_enqueue"

    def handle(self, args):
        pass


#: One job's wire JSON on each backend, as the raw loops write it.
PG_MESSAGE = envelope_texts(PgBench.name, [encode_args(PgBench.name, BODY)], [new_job_id()])[0]
SIDEKIQ_PAYLOAD = client_payloads(RedisBench, [encode_args(RedisBench.name, BODY)],
                                  time.time())[1][0]


@pytest.fixture
def pg_ready(pg_conn):
    with pg_conn.cursor() as cur:
        cur.execute("SELECT pgmq.create('bench_enqueue'); SELECT pgmq.purge_queue('bench_enqueue');"
                    "CREATE TABLE IF NOT EXISTS bench_raw (id bigserial PRIMARY KEY, body jsonb);"
                    "TRUNCATE bench_raw")
    pg_conn.commit()
    yield pg_conn
    with pg_conn.cursor() as cur:
        cur.execute("SELECT pgmq.purge_queue('bench_enqueue'); TRUNCATE bench_raw")
    pg_conn.commit()


def test_pgmq_enqueue_one(benchmark, pg_ready):
    def enqueue():
        PgBench.enqueue(pg_ready, BODY)
        pg_ready.commit()
    benchmark.group = "enqueue one: pgmq"
    benchmark(enqueue)


def test_raw_pg_insert_one(benchmark, pg_ready):
    body = PG_MESSAGE

    def insert():
        with pg_ready.cursor() as cur:
            cur.execute("INSERT INTO bench_raw (body) VALUES (%s)", (body,))
        pg_ready.commit()
    benchmark.group = "enqueue one: pgmq"
    benchmark(insert)


def test_pgmq_enqueue_batch(benchmark, pg_ready):
    batch = [BODY] * BATCH

    def enqueue():
        PgBench.enqueue_batch(pg_ready, batch)
        pg_ready.commit()
    benchmark.group = f"enqueue batch of {BATCH}: pgmq"
    benchmark(enqueue)


def test_raw_pg_insert_batch(benchmark, pg_ready):
    body = PG_MESSAGE
    values = ",".join(["(%s)"] * BATCH)

    def insert():
        with pg_ready.cursor() as cur:
            cur.execute(f"INSERT INTO bench_raw (body) VALUES {values}", [body] * BATCH)
        pg_ready.commit()
    benchmark.group = f"enqueue batch of {BATCH}: pgmq"
    benchmark(insert)


def test_sidekiq_enqueue_one(benchmark, redis_conn):
    benchmark.group = "enqueue one: sidekiq"
    benchmark(RedisBench.enqueue, redis_conn, BODY)


def test_raw_redis_lpush_one(benchmark, redis_conn):
    body = SIDEKIQ_PAYLOAD
    benchmark.group = "enqueue one: sidekiq"
    benchmark(redis_conn.lpush, "queue:bench_raw", body)


def test_sidekiq_enqueue_batch(benchmark, redis_conn):
    batch = [BODY] * BATCH
    benchmark.group = f"enqueue batch of {BATCH}: sidekiq"
    benchmark(RedisBench.enqueue_batch, redis_conn, batch)


def test_raw_redis_lpush_batch(benchmark, redis_conn):
    body = SIDEKIQ_PAYLOAD

    def push():
        pipe = redis_conn.pipeline(transaction=False)
        pipe.lpush("queue:bench_raw", *([body] * BATCH))
        pipe.execute()
    benchmark.group = f"enqueue batch of {BATCH}: sidekiq"
    benchmark(push)

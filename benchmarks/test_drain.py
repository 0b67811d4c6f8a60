"""Drain throughput: N pre-enqueued no-op jobs through a real supervisor, next to raw loops.

Before each round, untimed like the raw loops' inserts, N jobs are written while the supervisor
idles: on pgmq by our enqueuer in a transaction left open, on Redis as our enqueuer's payloads in
a side list. The round starts with the COMMIT (or a RENAME of the side list onto the queue) and
ends when the last job is acked (the queue and every in-flight list are empty). The raw Redis
loop counts its jobs with one INCR each, as the issue's yardstick does; our no-op jobs do
nothing, like Sidekiq's benchmark jobs. Reported per case: seconds per N jobs
(jobs/s = N / median); ``report.py`` prints jobs/s and the ratio to the raw loop.
"""

import json
import time

import psycopg2
import pytest
import redis

from jobrunner.backends.sidekiq.payload import client_payloads
from jobrunner.job import encode_args

from bench_app import PgNoop, RedisNoop
from conftest import JOBS
from runner import (Supervisor, pgmq_remaining, raw_pg_drain, raw_redis_drain,
                    sidekiq_remaining, wait_until)

PROCESSES = [1, 2, 4, 8]
#: Seconds between two checks for the end of a drain; each check costs the server a query.
POLL = 0.01
STAGING = "bench:staging"


@pytest.fixture
def pgmq_queue(pg_dsn):
    conn = psycopg2.connect(pg_dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT pgmq.create('bench'); SELECT pgmq.purge_queue('bench')")
    conn.commit()
    yield conn
    conn.close()


@pytest.mark.parametrize("processes", PROCESSES)
def test_drain_pgmq(benchmark, pg_dsn, redis_url, pgmq_queue, processes):
    supervisor = Supervisor("pg_registry", processes,
                            {"JOBRUNNER_PG_DSN": pg_dsn, "JOBRUNNER_REDIS_URL": redis_url,
                             "BENCH_QUEUE": "bench"})
    conn = pgmq_queue

    def enqueue():
        PgNoop.enqueue_batch(conn, [{"n": i} for i in range(JOBS)])   # invisible until commit

    def drain():
        conn.commit()
        wait_until(lambda: pgmq_remaining(conn, "bench") == 0, interval=POLL)

    try:
        benchmark.group = f"drain {JOBS} jobs: pgmq x{processes}"
        benchmark.extra_info["jobs"] = JOBS
        benchmark.pedantic(drain, setup=enqueue, rounds=3, iterations=1, warmup_rounds=1)
    finally:
        supervisor.stop()


@pytest.mark.parametrize("processes", PROCESSES)
def test_drain_raw_pg_claim_loop(benchmark, pg_conn, pg_dsn, processes):
    body = json.dumps({"n": 0})

    def setup():
        with pg_conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS bench_raw (id bigserial PRIMARY KEY, "
                        "body jsonb); TRUNCATE bench_raw")
            cur.execute("INSERT INTO bench_raw (body) SELECT %s::jsonb FROM "
                        "generate_series(1, %s)", (body, JOBS))
        pg_conn.commit()

    benchmark.group = f"drain {JOBS} jobs: pgmq x{processes}"
    benchmark.extra_info["jobs"] = JOBS
    benchmark.pedantic(lambda: raw_pg_drain(pg_dsn, processes), setup=setup, rounds=3,
                       iterations=1)


@pytest.mark.parametrize("processes", PROCESSES)
def test_drain_sidekiq(benchmark, redis_url, processes):
    supervisor = Supervisor("redis_registry", processes,
                            {"JOBRUNNER_REDIS_URL": redis_url, "BENCH_QUEUE": "bench"})
    client = redis.Redis.from_url(redis_url)

    def enqueue():
        # The jobs our enqueuer writes, in a side list that one RENAME turns into the queue.
        _, payloads = client_payloads(RedisNoop, [encode_args(RedisNoop.name, {"n": i})
                                                  for i in range(JOBS)], time.time())
        client.lpush(STAGING, *payloads)

    def drain():
        client.rename(STAGING, "queue:bench")
        wait_until(lambda: sidekiq_remaining(client, "bench") == 0, interval=POLL)

    try:
        benchmark.group = f"drain {JOBS} jobs: sidekiq x{processes}"
        benchmark.extra_info["jobs"] = JOBS
        benchmark.pedantic(drain, setup=enqueue, rounds=3, iterations=1, warmup_rounds=1)
    finally:
        supervisor.stop()


@pytest.mark.parametrize("processes", PROCESSES)
def test_drain_raw_redis_brpop_loop(benchmark, redis_url, processes):
    client = redis.Redis.from_url(redis_url)
    body = json.dumps({"class": "RedisNoop", "args": [{"n": 0}]})

    def setup():
        client.set("raw:done", 0)
        client.lpush("queue:raw", *([body] * JOBS))

    benchmark.group = f"drain {JOBS} jobs: sidekiq x{processes}"
    benchmark.extra_info["jobs"] = JOBS
    benchmark.pedantic(lambda: raw_redis_drain(redis_url, "queue:raw", "raw:done", JOBS,
                                               processes),
                       setup=setup, rounds=3, iterations=1)

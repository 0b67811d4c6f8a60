"""Drain throughput: N pre-enqueued no-op jobs through a real supervisor, next to raw loops.

Each round enqueues N jobs in one batch while the supervisor is idle and times until the last
one is done, so our time includes the enqueue (about 10-20% of it) while the raw loops' rows are
inserted untimed: the ratios understate us a little. Reported per case: seconds per N jobs
(jobs/s = N / median); ``report.py`` prints jobs/s and the ratio to the raw loop.
"""

import json

import psycopg2
import pytest
import redis

from bench_app import COUNTER, PgNoop, RedisNoop
from conftest import JOBS
from runner import Supervisor, raw_pg_drain, raw_redis_drain, wait_until

PROCESSES = [1, 2, 4, 8]


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

    def remaining():
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pgmq.q_bench")
            conn.commit()
            return cur.fetchone()[0]

    def drain():
        PgNoop.enqueue_batch(conn, [{"n": i} for i in range(JOBS)])
        conn.commit()
        wait_until(lambda: remaining() == 0)

    try:
        benchmark.group = f"drain {JOBS} jobs: pgmq x{processes}"
        benchmark.extra_info["jobs"] = JOBS
        benchmark.pedantic(drain, rounds=3, iterations=1, warmup_rounds=1)
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

    def drain():
        client.set(COUNTER, 0)
        RedisNoop.enqueue_batch(client, [{"n": i} for i in range(JOBS)])
        wait_until(lambda: int(client.get(COUNTER)) >= JOBS)

    try:
        benchmark.group = f"drain {JOBS} jobs: sidekiq x{processes}"
        benchmark.extra_info["jobs"] = JOBS
        benchmark.pedantic(drain, rounds=3, iterations=1, warmup_rounds=1)
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

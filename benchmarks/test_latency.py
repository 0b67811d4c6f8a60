"""Enqueue -> start latency at idle, per backend, next to a raw driver woken by the same write.

One job at a time is enqueued into an idle supervisor (2 children); its worker pushes the time
it started to a Redis list. Latency = start time - time just before the enqueue call. The raw
yardsticks: a process blocked in BRPOP woken by one LPUSH; a process in LISTEN woken by an
INSERT + NOTIFY that then claims the row with the claim loop's statement.
"""

import json
import time

import psycopg2
import pytest
import redis

from bench_app import STARTED, PgLatency, RedisLatency
from conftest import JOBS
from runner import Supervisor, percentile, start_raw_waiter

SAMPLES = min(JOBS, 200)
PAUSE = 0.02          # let the child go back to its idle wait between samples


def _measure(benchmark, send, client, out):
    latencies = []

    def one(index=[0]):
        index[0] += 1
        client.delete(out)
        sent = time.time()
        send(index[0])
        _, raw = client.blpop(out, timeout=10) or (None, None)
        assert raw is not None, "the job did not start within 10 s"
        latencies.append(float(raw.split()[1]) - sent)
        time.sleep(PAUSE)

    for _ in range(3):
        one()
    latencies.clear()
    # With --benchmark-disable pytest-benchmark calls ``one`` once: a single sample.
    benchmark.pedantic(one, rounds=SAMPLES, iterations=1)
    info = {"p50_ms": round(percentile(latencies, 0.5) * 1000, 3),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 3), "samples": len(latencies)}
    benchmark.extra_info.update(info)
    return info


@pytest.mark.parametrize("backend", ["sidekiq", "pgmq"])
def test_latency(benchmark, backend, pg_dsn, redis_url):
    client = redis.Redis.from_url(redis_url)
    env = {"JOBRUNNER_REDIS_URL": redis_url, "BENCH_QUEUE": "bench"}
    conn = None
    if backend == "pgmq":
        env["JOBRUNNER_PG_DSN"] = pg_dsn
        conn = psycopg2.connect(pg_dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pgmq.create('bench'); SELECT pgmq.purge_queue('bench')")

        def send(index):
            PgLatency.enqueue(conn, index)
    else:
        client.delete("queue:bench")

        def send(index):
            RedisLatency.enqueue(client, index)
    registry = "pg_latency_registry" if backend == "pgmq" else "redis_latency_registry"
    supervisor = Supervisor(registry, 2, env)
    try:
        # ready: one job went through
        client.delete(STARTED)
        send(0)
        assert client.blpop(STARTED, timeout=30), "supervisor did not start"
        time.sleep(0.2)
        benchmark.group = f"latency enqueue->start at idle: {backend}"
        _measure(benchmark, send, client, STARTED)
    finally:
        supervisor.stop()
        if conn is not None:
            conn.close()


@pytest.mark.parametrize("backend", ["sidekiq", "pgmq"])
def test_latency_raw(benchmark, backend, pg_conn, pg_dsn, redis_url):
    client = redis.Redis.from_url(redis_url)
    out = "bench:raw_started"
    total = 10 ** 9        # the waiter is terminated at the end
    if backend == "pgmq":
        with pg_conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS bench_raw (id bigserial PRIMARY KEY, "
                        "body jsonb); TRUNCATE bench_raw")
        pg_conn.commit()
        waiter = start_raw_waiter("pg", total, redis_url, dsn=pg_dsn, out=out)

        def send(index):
            with pg_conn.cursor() as cur:
                cur.execute("INSERT INTO bench_raw (body) VALUES (%s); NOTIFY bench_raw",
                            (json.dumps({"n": index}),))
            pg_conn.commit()
    else:
        client.delete("bench:raw_lat")
        waiter = start_raw_waiter("redis", total, redis_url, key="bench:raw_lat", out=out)

        def send(index):
            client.lpush("bench:raw_lat", index)
    try:
        benchmark.group = f"latency enqueue->start at idle: {backend}"
        client.delete(out)
        time.sleep(0.3)   # the waiter is connected and blocked
        _measure(benchmark, send, client, out)
    finally:
        waiter.terminate()
        waiter.join(5)

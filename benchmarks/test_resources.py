"""Child memory at rest and after many jobs, and head-of-line blocking, per backend.

RSS: a supervisor with 2 children runs a few jobs (at rest), then JOBRUNNER_BENCH_RSS_JOBS
no-op jobs (100,000 by default; the smoke pass uses JOBRUNNER_BENCH_JOBS); reported per child
with a bare raw-driver process (python + the driver, connected) measured in the same session.

Head-of-line: 2 children, one long job (5 s) then 100 short ones (1 ms each) enqueued behind it;
the short ones must all finish long before the long one does (about a second at most).
"""

import os
import subprocess
import sys
import time

import psycopg2
import pytest
import redis

from bench_app import QUEUE, SHORT_DONE, PgNoop, PgSleep, RedisNoop, RedisSleep
from conftest import JOBS
from runner import (Supervisor, child_pids, pgmq_drained, rss_mb, sidekiq_remaining,
                    wait_until)

RSS_JOBS = int(os.environ.get("JOBRUNNER_BENCH_RSS_JOBS", 100_000 if JOBS >= 1000 else JOBS))
LONG = float(os.environ.get("JOBRUNNER_BENCH_LONG", "5"))
SHORT = 100


def _pg_queue(pg_dsn):
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT pgmq.create('bench'); SELECT pgmq.purge_queue('bench')")
    return conn


def _raw_driver_rss(backend, pg_dsn, redis_url):
    code = ("import redis; c = redis.Redis.from_url(%r); c.ping()" % redis_url
            if backend == "sidekiq" else
            "import psycopg2; c = psycopg2.connect(%r); c.cursor().execute('SELECT 1')" % pg_dsn)
    code += ("\nfor line in open('/proc/self/status'):\n"
             "    if line.startswith('VmRSS:'): print(int(line.split()[1]) / 1024.0)")
    return float(subprocess.check_output([sys.executable, "-c", code]).decode())


@pytest.mark.parametrize("backend", ["sidekiq", "pgmq"])
def test_child_rss(benchmark, backend, pg_dsn, redis_url):
    client = redis.Redis.from_url(redis_url)
    env = {"JOBRUNNER_REDIS_URL": redis_url, "BENCH_QUEUE": "bench"}
    conn = None
    if backend == "pgmq":
        env["JOBRUNNER_PG_DSN"] = pg_dsn
        conn = _pg_queue(pg_dsn)

        def run(n):
            for start in range(0, n, 10_000):
                PgNoop.enqueue_batch(conn, [{"n": i} for i in range(min(10_000, n - start))])
            wait_until(lambda: pgmq_drained(conn, QUEUE), timeout=600)
    else:
        def run(n):
            for start in range(0, n, 10_000):
                RedisNoop.enqueue_batch(client, [{"n": i} for i in range(min(10_000, n - start))])
            wait_until(lambda: sidekiq_remaining(client, QUEUE) == 0, timeout=600)
    supervisor = Supervisor("pg_registry" if backend == "pgmq" else "redis_registry", 2, env)
    try:
        run(20)
        time.sleep(0.5)
        pids = child_pids(supervisor)
        assert len(pids) == 2
        rest = {pid: rss_mb(pid) for pid in pids}
        benchmark.group = f"child RSS: {backend}"
        benchmark.pedantic(run, args=(RSS_JOBS,), rounds=1, iterations=1)
        time.sleep(0.5)
        after = {pid: rss_mb(pid) for pid in pids if os.path.exists(f"/proc/{pid}")}
        benchmark.extra_info.update({
            "jobs": RSS_JOBS, "rss_rest_mb": round(max(rest.values()), 1),
            "rss_after_mb": round(max(after.values()), 1),
            "rss_growth_mb": round(max(after[p] - rest[p] for p in after), 2),
            "raw_driver_rss_mb": round(_raw_driver_rss(backend, pg_dsn, redis_url), 1)})
    finally:
        supervisor.stop()
        if conn is not None:
            conn.close()


@pytest.mark.parametrize("backend", ["sidekiq", "pgmq"])
def test_head_of_line(benchmark, backend, pg_dsn, redis_url):
    client = redis.Redis.from_url(redis_url)
    env = {"JOBRUNNER_REDIS_URL": redis_url, "BENCH_QUEUE": "bench"}
    conn = None
    if backend == "pgmq":
        env["JOBRUNNER_PG_DSN"] = pg_dsn
        conn = _pg_queue(pg_dsn)
        worker, target = PgSleep, conn
    else:
        client.delete("queue:bench")
        worker, target = RedisSleep, client
    supervisor = Supervisor("pg_sleep_registry" if backend == "pgmq" else "redis_sleep_registry",
                            2, env)
    result = {}

    def run():
        client.delete(SHORT_DONE)
        started = time.time()
        worker.enqueue(target, LONG)
        worker.enqueue_batch(target, [0.001] * SHORT)
        wait_until(lambda: client.llen(SHORT_DONE) >= SHORT, timeout=60)
        result["short_done_s"] = max(float(t) for t in client.lrange(SHORT_DONE, 0, -1)) - started

    try:
        worker.enqueue(target, 0.001)                  # ready: one short job went through
        wait_until(lambda: client.llen(SHORT_DONE) >= 1, timeout=30)
        time.sleep(0.3)
        benchmark.group = f"head-of-line: {backend}"
        benchmark.pedantic(run, rounds=1, iterations=1)
        benchmark.extra_info.update({"long_s": LONG, "short_jobs": SHORT,
                                     "short_done_s": round(result["short_done_s"], 3)})
        assert result["short_done_s"] < min(LONG, 2.5), \
            f"{SHORT} short jobs took {result['short_done_s']:.2f}s behind a {LONG}s job"
    finally:
        supervisor.stop()
        if conn is not None:
            conn.close()

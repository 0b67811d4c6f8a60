"""Drain throughput: jobrunner draining N queued jobs next to raw loops doing the same work.

Every drain case, here and in ``test_drain_sidekiq_ruby.py`` and ``test_drain_pause.py``, times
rounds of N jobs (``JOBRUNNER_BENCH_JOBS``) written before the round starts, untimed. jobrunner
runs as a real supervisor (``jobrunner run``) with default settings and logging (one INFO line
per job, to a file) and 2 children unless said otherwise. Its round starts with the COMMIT of
the transaction our enqueuer wrote the jobs in (pgmq) or the RENAME of a side list of our
enqueuer's payloads onto ``queue:bench`` (Redis), and ends when the last job is acked (queue and
in-flight lists empty) and, for counting jobs, ``bench:count`` reached N. Raw loops
(``raw_loops.py``) run in 2 processes forked and connected before the round; it starts when they
are let go and ends when they have exited, every job taken (and counted). Their jobs are our
enqueuer's payloads in a list (Redis) or the same JSON args in a plain table (Postgres).

Supervisors and Sidekiq get one untimed warm-up round, then 3 timed rounds; raw loops 3 rounds.
Groups, per backend (``report.py`` prints jobs/s = N / median and each ratio):

- **no-op**: jobrunner no-op jobs vs a raw no-op loop, the yardstick: Redis ``BRPOP`` per job;
  Postgres the one-row ``DELETE … FOR UPDATE SKIP LOCKED … RETURNING`` claim per statement.
- **one-INCR**: jobs whose ``handle`` does one ``INCR bench:count`` on the benchmark's Redis
  (one client per child) vs two yardsticks: the raw one-at-a-time loop + the same ``INCR`` per
  job ("raw"), and the batched limit ("batched"): 100 jobs per round trip (Redis
  ``RPOP key 100``, Postgres a 100-row ``DELETE … RETURNING``) then the job's own ``INCR`` per
  job, one round trip each, the ceiling for this job. On Redis the group also holds Ruby
  Sidekiq 6.4 (``test_drain_sidekiq_ruby.py``): 2 ``sidekiq`` processes x 10 threads running
  the same payloads with a Ruby ``perform`` doing the same ``INCR``, its default INFO logging
  (start and done lines per job) to a file; both are up (heartbeating) before the rounds, a
  round starts with the same RENAME and ends when ``bench:count`` reaches N.
  Sidekiq is a yardstick too ("sidekiq"), so each case shows its ratio to it.
- **5 ms job, 8 children** (``test_drain_pause.py``): N/5 jobs doing ``time.sleep(0.005)``
  through ``--processes 8``; no raw loop, the yardstick is the ideal 8 x 200 = 1,600 jobs/s.
"""

import pytest

from bench_app import COUNTER, PgIncr, PgNoop, RedisIncr, RedisNoop
from conftest import JOBS
from raw_loops import fill_pg, fill_redis, pg_loops, redis_loops
from runner import (Supervisor, describe, drain_group, pgmq_round, redis_payloads,
                    redis_round)

PROCESSES = 2
RAW_KEY = "queue:raw"
#: (kind, backend) -> (worker, its registry) in ``bench_app``
CASES = {("no-op", "pgmq"): (PgNoop, "pg_registry"),
         ("no-op", "redis"): (RedisNoop, "redis_registry"),
         ("one-INCR", "pgmq"): (PgIncr, "pg_incr_registry"),
         ("one-INCR", "redis"): (RedisIncr, "redis_incr_registry")}
BACKENDS = ["pgmq", "redis"]


# -- jobrunner --------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["no-op", "one-INCR"])
def test_drain(benchmark, request, redis_url, redis_conn, backend, kind):
    worker, registry = CASES[kind, backend]
    env = {"JOBRUNNER_REDIS_URL": redis_url, "BENCH_QUEUE": "bench"}
    if backend == "pgmq":
        env["JOBRUNNER_PG_DSN"] = request.getfixturevalue("pg_dsn")
        queue = request.getfixturevalue("pgmq_queue")
    supervisor = Supervisor(registry, PROCESSES, env)
    try:
        describe(benchmark, drain_group(JOBS, kind, backend, PROCESSES), JOBS)
        if backend == "pgmq":
            pgmq_round(benchmark, queue, worker, JOBS,
                       counter_client=redis_conn if kind == "one-INCR" else None)
        else:
            redis_round(benchmark, redis_conn, worker, JOBS, count=kind == "one-INCR")
    finally:
        supervisor.stop()


# -- raw loops --------------------------------------------------------------------------------

RAW = [("no-op", False), ("one-INCR", False), ("one-INCR", True)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,batched", RAW, ids=["noop", "incr", "incr-batched"])
def test_drain_raw(benchmark, request, redis_url, redis_conn, backend, kind, batched):
    counter = COUNTER if kind == "one-INCR" else None
    if backend == "pgmq":
        conn, dsn = request.getfixturevalue("pg_conn"), request.getfixturevalue("pg_dsn")
        bodies = ['{"n": %d}' % i for i in range(JOBS)]

        def fill():
            fill_pg(conn, bodies)
            return pg_loops(dsn, PROCESSES, redis_url, counter, batched)
    else:
        payloads = redis_payloads(CASES[kind, "redis"][0], JOBS)

        def fill():
            fill_redis(redis_conn, RAW_KEY, payloads, PROCESSES, batched)
            return redis_loops(redis_url, RAW_KEY, PROCESSES, counter, batched)

    def setup():
        redis_conn.set(COUNTER, 0)
        return (fill(),), {}

    def drain(loops):
        loops.run()
        assert counter is None or int(redis_conn.get(COUNTER)) == JOBS

    describe(benchmark, drain_group(JOBS, kind, backend, PROCESSES), JOBS,
             yardstick="batched" if batched else "raw")
    benchmark.pedantic(drain, setup=setup, rounds=3, iterations=1)

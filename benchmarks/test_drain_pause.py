"""Drain of 5 ms jobs through 8 children, next to the ideal 8 x 200 = 1,600 jobs/s.

No raw loop: the yardstick is the ideal rate. N/5 jobs per round (``JOBRUNNER_BENCH_JOBS``/5),
each ``time.sleep(0.005)``, rounds timed as in ``test_drain.py``.
"""

import pytest

from bench_app import PAUSE, PgPause, RedisPause
from conftest import JOBS
from runner import Supervisor, describe, drain_group, pgmq_round, redis_round

PROCESSES = 8
PAUSE_JOBS = max(JOBS // 5, 40)
IDEAL = PROCESSES / PAUSE


@pytest.mark.parametrize("backend", ["pgmq", "redis"])
def test_drain_pause(benchmark, request, pg_dsn, redis_url, backend):
    env = {"JOBRUNNER_REDIS_URL": redis_url, "BENCH_QUEUE": "bench"}
    if backend == "pgmq":
        env["JOBRUNNER_PG_DSN"] = pg_dsn
        conn, worker, registry = request.getfixturevalue("pgmq_queue"), PgPause, "pg"
    else:
        conn, worker, registry = request.getfixturevalue("redis_conn"), RedisPause, "redis"
    supervisor = Supervisor(f"{registry}_pause_registry", PROCESSES, env)
    describe(benchmark, drain_group(PAUSE_JOBS, "5 ms", backend, PROCESSES), PAUSE_JOBS,
             ideal_rate=IDEAL)
    try:
        (pgmq_round if backend == "pgmq" else redis_round)(benchmark, conn, worker, PAUSE_JOBS)
    finally:
        supervisor.stop()

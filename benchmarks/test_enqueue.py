"""Enqueue speed, one job per call and in batches, next to the raw driver doing the same write.

The raw loops write the very JSON a jobrunner enqueue writes (built once, outside the timing),
so a ratio measures what jobrunner adds to the write, not a difference in payload size.

The durable enqueue (``SidekiqEnqueuer.durable``: WAIT for one replica in the push's round
trip) is timed on a private master with one replica (``tests/sentinel_support.py``), next to
the plain enqueue on the same pair: the ratio is what waiting for the replica costs.

A single enqueue is one round trip of 60-150 us here, and how long a round trip takes drifts
with the machine's state from one test to the next. So each case times its own call with one
call of its counterpart, untimed, before each: ours and the raw loop see the same machine.
"""

import os
import time

import psycopg
import psycopg2
import pytest
import redis

import jobrunner
from jobrunner.backends.pgmq.enqueue import envelope_texts
from jobrunner.backends.sidekiq.payload import client_payloads
from jobrunner.job import encode_args, new_job_id

BATCH = 100
BODY = {"user_id": 12345, "action": "welcome"}
#: Timed calls per case (each after one untimed call of the counterpart).
ROUNDS = min(2000, int(os.environ.get("JOBRUNNER_BENCH_JOBS", "5000")))


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


@pytest.fixture(params=["psycopg2", "psycopg"])
def pg_ready(request, pg_dsn):
    """A connection of each driver (psycopg2, psycopg 3), on an empty queue and raw table."""
    conn = psycopg2.connect(pg_dsn) if request.param == "psycopg2" else psycopg.connect(pg_dsn)
    setup = ["SELECT pgmq.create('bench_enqueue')", "SELECT pgmq.purge_queue('bench_enqueue')",
             "CREATE TABLE IF NOT EXISTS bench_raw (id bigserial PRIMARY KEY, body jsonb)",
             "TRUNCATE bench_raw"]
    with conn.cursor() as cur:
        for statement in setup:          # one each: psycopg 3 binds on the server
            cur.execute(statement)
    conn.commit()
    yield conn
    with conn.cursor() as cur:
        cur.execute("SELECT pgmq.purge_queue('bench_enqueue')")
        cur.execute("TRUNCATE bench_raw")
    conn.commit()
    conn.close()


def driver(conn):
    return "psycopg 3" if isinstance(conn, psycopg.Connection) else "psycopg2"


def interleaved(benchmark, group, timed, counterpart, rounds=ROUNDS):
    """Time ``timed``, each call after one untimed call of ``counterpart``."""
    benchmark.group = group
    benchmark.pedantic(timed, setup=lambda: counterpart() and None, rounds=rounds,
                       iterations=1, warmup_rounds=min(50, rounds))


# -- pgmq ----------------------------------------------------------------------------------

def pg_enqueue_one(conn):
    PgBench.enqueue(conn, BODY)
    conn.commit()


def pg_insert_one(conn):
    with conn.cursor() as cur:
        cur.execute("INSERT INTO bench_raw (body) VALUES (%s)", (PG_MESSAGE,))
    conn.commit()


def pg_enqueue_batch(conn):
    PgBench.enqueue_batch(conn, [BODY] * BATCH)
    conn.commit()


def pg_insert_batch(conn):
    with conn.cursor() as cur:
        cur.execute(f"INSERT INTO bench_raw (body) VALUES {','.join(['(%s)'] * BATCH)}",
                    [PG_MESSAGE] * BATCH)
    conn.commit()


# Each pgmq case runs on both drivers; the raw INSERT of the same group uses the same driver
# the way its users write it (psycopg 3's default cursor binds on the server).

def test_pgmq_enqueue_one(benchmark, pg_ready):
    interleaved(benchmark, f"enqueue one: pgmq, {driver(pg_ready)}",
                lambda: pg_enqueue_one(pg_ready), lambda: pg_insert_one(pg_ready))


def test_raw_pg_insert_one(benchmark, pg_ready):
    interleaved(benchmark, f"enqueue one: pgmq, {driver(pg_ready)}",
                lambda: pg_insert_one(pg_ready), lambda: pg_enqueue_one(pg_ready))


def test_pgmq_enqueue_batch(benchmark, pg_ready):
    interleaved(benchmark, f"enqueue batch of {BATCH}: pgmq, {driver(pg_ready)}",
                lambda: pg_enqueue_batch(pg_ready), lambda: pg_insert_batch(pg_ready),
                rounds=ROUNDS // 4)


def test_raw_pg_insert_batch(benchmark, pg_ready):
    interleaved(benchmark, f"enqueue batch of {BATCH}: pgmq, {driver(pg_ready)}",
                lambda: pg_insert_batch(pg_ready), lambda: pg_enqueue_batch(pg_ready),
                rounds=ROUNDS // 4)


# -- sidekiq -------------------------------------------------------------------------------

def redis_push_batch(conn):
    pipe = conn.pipeline(transaction=False)
    pipe.lpush("queue:bench_raw", *([SIDEKIQ_PAYLOAD] * BATCH))
    pipe.execute()


def test_sidekiq_enqueue_one(benchmark, redis_conn):
    interleaved(benchmark, "enqueue one: sidekiq", lambda: RedisBench.enqueue(redis_conn, BODY),
                lambda: redis_conn.lpush("queue:bench_raw", SIDEKIQ_PAYLOAD))


def test_raw_redis_lpush_one(benchmark, redis_conn):
    interleaved(benchmark, "enqueue one: sidekiq",
                lambda: redis_conn.lpush("queue:bench_raw", SIDEKIQ_PAYLOAD),
                lambda: RedisBench.enqueue(redis_conn, BODY))


def test_sidekiq_enqueue_batch(benchmark, redis_conn):
    interleaved(benchmark, f"enqueue batch of {BATCH}: sidekiq",
                lambda: RedisBench.enqueue_batch(redis_conn, [BODY] * BATCH),
                lambda: redis_push_batch(redis_conn), rounds=ROUNDS // 4)


def test_raw_redis_lpush_batch(benchmark, redis_conn):
    interleaved(benchmark, f"enqueue batch of {BATCH}: sidekiq",
                lambda: redis_push_batch(redis_conn),
                lambda: RedisBench.enqueue_batch(redis_conn, [BODY] * BATCH), rounds=ROUNDS // 4)


# -- sidekiq, durable: WAIT for one replica ---------------------------------------------------

class DurableRedisBench(RedisBench):
    enqueuer = jobrunner.SidekiqEnqueuer.durable(replicas=1, timeout=1.0)


@pytest.fixture(scope="module")
def replicated(tmp_path_factory):
    """A client of a private master that has one replica, on an empty queue."""
    from sentinel_support import Replication
    pair = Replication(tmp_path_factory.mktemp("replication"))
    conn = redis.Redis(port=pair.master.port, decode_responses=True)
    yield conn
    conn.close()
    pair.close()


def test_sidekiq_enqueue_one_durable(benchmark, replicated):
    interleaved(benchmark, "enqueue one: sidekiq, WAIT for 1 replica",
                lambda: DurableRedisBench.enqueue(replicated, BODY),
                lambda: RedisBench.enqueue(replicated, BODY))


def test_sidekiq_enqueue_one_without_wait(benchmark, replicated):
    benchmark.extra_info["yardstick"] = "no WAIT"
    interleaved(benchmark, "enqueue one: sidekiq, WAIT for 1 replica",
                lambda: RedisBench.enqueue(replicated, BODY),
                lambda: DurableRedisBench.enqueue(replicated, BODY))


def test_sidekiq_enqueue_batch_durable(benchmark, replicated):
    interleaved(benchmark, f"enqueue batch of {BATCH}: sidekiq, WAIT for 1 replica",
                lambda: DurableRedisBench.enqueue_batch(replicated, [BODY] * BATCH),
                lambda: RedisBench.enqueue_batch(replicated, [BODY] * BATCH),
                rounds=ROUNDS // 4)


def test_sidekiq_enqueue_batch_without_wait(benchmark, replicated):
    benchmark.extra_info["yardstick"] = "no WAIT"
    interleaved(benchmark, f"enqueue batch of {BATCH}: sidekiq, WAIT for 1 replica",
                lambda: RedisBench.enqueue_batch(replicated, [BODY] * BATCH),
                lambda: DurableRedisBench.enqueue_batch(replicated, [BODY] * BATCH),
                rounds=ROUNDS // 4)

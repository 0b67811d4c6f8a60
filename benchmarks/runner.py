"""Helpers for drain benchmarks: a supervisor in a subprocess and raw-driver loops to compare."""

import multiprocessing
import os
import signal
import subprocess
import sys
import time

import psycopg2
import redis

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


class Supervisor:
    """`jobrunner run bench_app:<registry>` with N children, started once per case."""

    def __init__(self, registry, processes, env):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jobrunner", "run", f"bench_app:{registry}",
             "--processes", str(processes), "--shutdown-timeout", "5"],
            cwd=HERE, env=dict(os.environ, PYTHONPATH=ROOT, **env),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def wait_until(condition, timeout=120.0, interval=0.002):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("benchmark did not finish in time")
        time.sleep(interval)


# -- raw-driver loops, the yardsticks ---------------------------------------------------------

def _raw_redis_loop(url, key, counter, total):
    client = redis.Redis.from_url(url)
    while True:
        item = client.brpop(key, timeout=1)
        if item is None:
            if int(client.get(counter) or 0) >= total:
                return
            continue
        client.incr(counter)


def raw_redis_drain(url, key, counter, total, processes):
    """BRPOP + INCR per job in ``processes`` processes until ``total`` jobs are counted."""
    workers = [multiprocessing.Process(target=_raw_redis_loop, args=(url, key, counter, total))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    client = redis.Redis.from_url(url)
    wait_until(lambda: int(client.get(counter) or 0) >= total)
    for worker in workers:
        worker.join(10)


CLAIM_ONE = ("DELETE FROM bench_raw WHERE id = (SELECT id FROM bench_raw ORDER BY id "
             "FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING id, body")


def _raw_pg_loop(dsn):
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cur = conn.cursor()
    while True:
        cur.execute(CLAIM_ONE)
        if cur.fetchone() is None:
            return


def raw_pg_drain(dsn, processes):
    """Claim one row per autocommit statement in ``processes`` processes until empty."""
    workers = [multiprocessing.Process(target=_raw_pg_loop, args=(dsn,))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)

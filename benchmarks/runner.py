"""Helpers for drain benchmarks: a supervisor in a subprocess and raw-driver loops to compare."""

import multiprocessing
import os
import shutil
import tempfile
import time

import psycopg2
import redis

from helpers import CliProcess, wait_for      # tests/helpers.py (conftest puts it on the path)

HERE = os.path.dirname(os.path.abspath(__file__))


class Supervisor(CliProcess):
    """`jobrunner run bench_app:<registry>` with N children, started once per case.

    Its log goes to a file, not an unread pipe: a full pipe would stall every child on its
    per-job log line. Writing them still counts the logging cost in the benchmark.
    """

    def __init__(self, registry, processes, env):
        self.log_dir = tempfile.mkdtemp(prefix="jobrunner-bench-")
        super().__init__(["run", f"bench_app:{registry}", "--processes", str(processes),
                          "--shutdown-timeout", "5"], env,
                         os.path.join(self.log_dir, "supervisor.log"), app_dir=HERE)

    def stop(self):
        super().stop()
        shutil.rmtree(self.log_dir, ignore_errors=True)


def wait_until(condition, timeout=120.0, interval=0.002):
    return wait_for(condition, timeout, interval, message="the benchmark to finish")


def sidekiq_remaining(client, queue):
    """Jobs of ``queue`` not yet acked: still queued, or fetched into a child's in-flight list
    (a job moves between the two atomically and leaves the list when acked)."""
    pipe = client.pipeline(transaction=False)
    pipe.llen(f"queue:{queue}")
    for key in client.smembers("jobrunner:inflight"):
        pipe.llen(key)
    return sum(pipe.execute())


def pgmq_remaining(conn, queue):
    """Messages of ``queue`` not yet acked (an acked message is deleted)."""
    with conn.cursor() as cur:
        cur.execute(f'SELECT count(*) FROM pgmq."q_{queue}"')
        count = cur.fetchone()[0]
    conn.commit()
    return count


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


def child_pids(supervisor, kind="worker"):
    """Pids of a supervisor's worker children (or its housekeeper), by their process titles."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                title = f.read().decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == supervisor.proc.pid and (("housekeeper" in title) == (kind != "worker")):
            pids.append(int(entry))
    return sorted(pids)


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


# -- raw-driver latency yardsticks: a process blocked on the driver, woken by one write --------

def _raw_redis_waiter(url, key, out, count):
    client = redis.Redis.from_url(url)
    for _ in range(count):
        _, raw = client.brpop(key)
        client.rpush(out, f"{raw.decode()} {time.time():.6f}")


def _raw_pg_waiter(dsn, url, out, count):
    """LISTEN, wake on NOTIFY, claim one row (the claim loop's statement), report the time."""
    import select
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("LISTEN bench_raw")
    client = redis.Redis.from_url(url)
    done = 0
    while done < count:
        cur.execute(CLAIM_ONE)
        row = cur.fetchone()
        if row is None:
            select.select([conn], [], [], 1.0)
            conn.poll()
            conn.notifies.clear()
            continue
        client.rpush(out, f"{row[1]['n']} {time.time():.6f}")
        done += 1


def start_raw_waiter(kind, count, url, dsn=None, key=None, out=None):
    if kind == "redis":
        process = multiprocessing.Process(target=_raw_redis_waiter, args=(url, key, out, count))
    else:
        process = multiprocessing.Process(target=_raw_pg_waiter, args=(dsn, url, out, count))
    process.start()
    return process

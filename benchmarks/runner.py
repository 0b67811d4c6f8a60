"""Helpers for the supervisor benchmarks: a supervisor in a subprocess, drain rounds, probes."""

import multiprocessing
import os
import shutil
import tempfile
import time

import psycopg2
import redis

from helpers import CliProcess, wait_for      # tests/helpers.py (conftest puts it on the path)
from jobrunner.backends.sidekiq.payload import client_payloads
from jobrunner.job import encode_args

from bench_app import COUNTER, QUEUE

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


#: Seconds between two checks for the end of a drain; each check costs the server a query.
POLL = 0.01
#: The Redis list a round's jobs are written to before one RENAME makes it the queue.
STAGING = "bench:staging"


def drain_group(jobs, kind, backend, processes):
    """The group name shared by the cases that drain the same jobs on the same backend."""
    return f"drain {jobs} {kind} jobs: {backend} x{processes}"


def describe(benchmark, group, jobs, yardstick=None, ideal_rate=None):
    """Name the case's group and what ``report.py`` compares: a case with ``yardstick`` (a short
    label) is one of its group's yardsticks; ``ideal_rate`` is a jobs/s that the case's own
    rate is compared with."""
    benchmark.group = group
    benchmark.extra_info["jobs"] = jobs
    if yardstick:
        benchmark.extra_info["yardstick"] = yardstick
    if ideal_rate:
        benchmark.extra_info["ideal_rate"] = ideal_rate


def redis_payloads(worker, jobs):
    """The Sidekiq-format payloads our enqueuer writes for ``jobs`` jobs of ``worker``."""
    _, payloads = client_payloads(worker, [encode_args(worker.name, {"n": i})
                                           for i in range(jobs)], time.time())
    return payloads


def counted(client, jobs):
    """How far the one-INCR jobs got: ``COUNTER`` (a round checks it reached ``jobs``)."""
    value = int(client.get(COUNTER) or 0)
    assert value <= jobs, f"{value} INCRs for {jobs} jobs"
    return value


def pgmq_round(benchmark, conn, worker, jobs, counter_client=None):
    """Rounds of ``jobs`` jobs of ``worker`` enqueued in a transaction left open (untimed), from
    its COMMIT until the last is acked (and, with ``counter_client``, has counted itself)."""
    def enqueue():
        if counter_client is not None:
            counter_client.set(COUNTER, 0)
        worker.enqueue_batch(conn, [{"n": i} for i in range(jobs)])   # invisible until commit

    def drain():
        conn.commit()
        wait_until(lambda: pgmq_drained(conn, QUEUE), interval=POLL)
        assert counter_client is None or counted(counter_client, jobs) == jobs

    benchmark.pedantic(drain, setup=enqueue, rounds=3, iterations=1, warmup_rounds=1)


def redis_round(benchmark, client, worker, jobs, count=False, acked=True):
    """Rounds of ``jobs`` jobs of ``worker`` in a side list (untimed), from the RENAME that makes
    it the queue until the last is acked (``acked``: a server keeping in-flight lists of ours)
    and, with ``count``, the jobs' INCRs have brought ``COUNTER`` to ``jobs``."""
    def enqueue():
        if count:
            client.set(COUNTER, 0)
        client.lpush(STAGING, *redis_payloads(worker, jobs))

    def drain():
        client.rename(STAGING, f"queue:{QUEUE}")
        if acked:
            wait_until(lambda: sidekiq_remaining(client, QUEUE) == 0, interval=POLL)
        if count:
            wait_until(lambda: counted(client, jobs) == jobs, interval=POLL)

    benchmark.pedantic(drain, setup=enqueue, rounds=3, iterations=1, warmup_rounds=1)


def sidekiq_remaining(client, queue):
    """Jobs of ``queue`` not yet acked: still queued, or fetched into a child's in-flight list
    (a job moves between the two atomically and leaves the list when acked)."""
    pipe = client.pipeline(transaction=False)
    pipe.llen(f"queue:{queue}")
    for key in client.smembers("jobrunner:inflight"):
        pipe.llen(key)
    return sum(pipe.execute())


#: The lowest msg_id left on a queue, read from the primary key (``.format(queue=...)``).
PGMQ_FIRST_ID = 'SELECT msg_id FROM pgmq."q_{queue}" ORDER BY msg_id LIMIT 1'


def pgmq_drained(conn, queue):
    """Whether every message of ``queue`` has been acked (an acked message is deleted).

    One probe of the primary key's first entry, not a ``count(*)``: polled every few ms, a
    count scans the whole heap, dead rows included (17-23 ms at 200,000 rows), and would take
    a core from the drain it measures. Nor ``NOT EXISTS (... ORDER BY msg_id LIMIT 1)``:
    Postgres drops the ORDER BY and LIMIT inside an EXISTS and may scan the heap just the
    same; a plain ``ORDER BY msg_id LIMIT 1`` reads the index."""
    with conn.cursor() as cur:
        cur.execute(PGMQ_FIRST_ID.format(queue=queue))
        drained = cur.fetchone() is None
    conn.commit()
    return drained


#: The raw Postgres loops' one-row claim (``raw_loops.py``), also the latency yardstick's.
CLAIM_ONE = ("DELETE FROM bench_raw WHERE id = (SELECT id FROM bench_raw ORDER BY id "
             "FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING id, body")


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

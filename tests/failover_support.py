"""A Postgres failover under load, measured: a web app's enqueues, a supervisor's runs, the
primary killed and its standby promoted; the figures of what came through.

``fail_over_under_load`` is shared by ``tests/test_pg_failover.py`` (which promotes at once and
asserts on the figures) and ``scripts/pg_failover.py`` (which can wait longer before the
promotion, as a failover tool does, and repeats the run). The supervisor runs
``tests/apps/failover_app.py``, whose ``Stamp`` jobs write ``ran <n> <pid> <time>`` lines.

The web app enqueues job n = 0, 1, 2 ... one per commit, through a multi-host DSN that names
the standby first; a commit that raised is retried as a new job, and only commits that
returned count as acknowledged. With ``stalled``, the replication link hangs just before the
kill and one batch of ``BATCH`` delayed jobs is committed over it: acknowledged at once under
asynchronous replication (and lost with the primary), left waiting for the standby under
synchronous replication (and never acknowledged).
"""

import threading
import time
from datetime import datetime

import psycopg2

import jobrunner
from helpers import wait_for

#: Seconds between two enqueues of the web app: a commit is nearly always in flight.
ENQUEUE_INTERVAL = 0.01
#: Runs wanted before the kill and after the promotion.
RUNS_EACH_SIDE = 100
#: The jobs committed while the link is stalled: how many, their first n, their delay (s).
BATCH, BATCH_FIRST, BATCH_DELAY = 50, 1_000_000, 5


class Sender(jobrunner.Worker):
    """The test's side of failover_app's Stamp: same name, the queue set per test."""

    enqueuer = jobrunner.PgEnqueuer
    name = "Stamp"


class Enqueuer(threading.Thread):
    """Enqueues job n = 0, 1, 2 ..., one per commit, as a web app would: a failed commit
    (the job may or may not have landed) is retried as a new job, and only commits that
    returned count as acknowledged."""

    def __init__(self, dsn):
        super().__init__(daemon=True)
        self.dsn = dsn
        self.acked = {}            # n -> time.time() its commit returned
        self.failures = 0
        self.stopping = threading.Event()

    def run(self):
        conn, n = None, 0
        while not self.stopping.is_set():
            try:
                if conn is None:
                    conn = psycopg2.connect(self.dsn, connect_timeout=2)
                Sender.enqueue(conn, {"n": n})
                conn.commit()
                self.acked[n] = time.time()
            except psycopg2.Error:
                self.failures += 1
                if conn is not None:
                    conn.close()
                conn = None
            n += 1
            self.stopping.wait(ENQUEUE_INTERVAL)
        if conn is not None:
            conn.close()

    def stop(self):
        self.stopping.set()
        self.join(10)


class StalledBatch(threading.Thread):
    """One commit of ``BATCH`` jobs made while the link to the standby is stalled, delayed so
    that none can run before the primary dies: acknowledged at once with asynchronous
    replication, left waiting for the standby with synchronous replication."""

    ids = range(BATCH_FIRST, BATCH_FIRST + BATCH)

    def __init__(self, dsn):
        super().__init__(daemon=True)
        self.dsn = dsn
        self.outcome = None          # "acknowledged", or the error its commit raised

    def run(self):
        conn = psycopg2.connect(self.dsn, connect_timeout=2)
        try:
            for n in self.ids:
                Sender.enqueue_in(conn, BATCH_DELAY, {"n": n})
            conn.commit()
            self.outcome = "acknowledged"
        except psycopg2.Error as exc:
            self.outcome = type(exc).__name__
        finally:
            conn.close()


def runs(path):
    """[(n, epoch time)] of every run failover_app recorded."""
    try:
        with open(path) as handle:
            return [(int(f[1]), float(f[3])) for f in (line.split() for line in handle)
                    if len(f) == 4 and f[0] == "ran"]
    except FileNotFoundError:
        return []


def runs_since(path, since):
    return [n for n, at in runs(path) if at > since]


def first_log_time(log, text):
    """Epoch time of the first log line holding ``text`` (lines open with the UTC time,
    ``2024-01-31T12:00:00.123Z``)."""
    for line in log.splitlines():
        if text in line:
            return datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
    raise AssertionError(f"{text!r} not in the log:\n{log[-3000:]}")


def fail_over_under_load(sv, cluster, queue, stalled=False, down=0.0):
    """Enqueue and run jobs on ``queue`` through the failover of ``cluster``; ``sv`` is the
    supervisor (a ``supervisor_support.Supervised`` of failover_app, already running). The
    standby is promoted once a child has been turned away by it as read-only, plus ``down``
    seconds (a failover tool's time to decide). Returns the figures, once the queue is drained
    on the new primary."""
    Sender.queue = queue
    enqueuer = Enqueuer(cluster.dsn(uri=False, standby_first=True))
    enqueuer.start()
    batch = None
    try:
        wait_for(lambda: len(runs(sv.out)) >= RUNS_EACH_SIDE, 30, 0.05, message="jobs running")
        batch = _commit_while_stalled(cluster) if stalled else None
        cluster.stop_primary()
        sv.wait_log("session is read-only", 15)
        if down:
            time.sleep(down)            # the failover tool deciding, not a synchronisation
        cluster.promote()
        wait_for(lambda: len(runs_since(sv.out, cluster.promoted_at)) >= RUNS_EACH_SIDE, 30,
                 0.05, message="jobs run after the promotion; log:\n" + sv.log()[-3000:])
    finally:
        enqueuer.stop()
        if batch is not None:
            batch.join(10)
    return _settle_and_count(sv, cluster, enqueuer, queue, batch)


def describe(cluster, stalled, figures):
    """One line of figures, as the test and the script print them."""
    return (f"pg failover ({'sync' if cluster.synchronous else 'async'}"
            f"{', link stalled' if stalled else ''}): "
            + ", ".join(f"{key} {value}" for key, value in figures.items()))


def _commit_while_stalled(cluster):
    """Stall the link, then commit a batch of jobs; return once the commit was acknowledged
    (async) or is seen waiting for the standby (sync)."""
    cluster.stall_replication()
    batch = StalledBatch(cluster.dsn())
    batch.start()
    if cluster.synchronous:
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
        wait_for(lambda: cluster.sql(cluster.primary, waiting)[0][0] > 0, 15, 0.02,
                 message="commits waiting for the standby")
    else:
        batch.join(15)
    return batch


def _settle_and_count(sv, cluster, enqueuer, queue, batch):
    """Wait until every job is settled on the new primary; the figures of the failover."""
    acked = set(enqueuer.acked)
    if cluster.synchronous:
        wait_for(lambda: acked <= {n for n, _ in runs(sv.out)}, 30, 0.05,
                 message="every acknowledged job to run")
    table = f'pgmq."q_{queue}"'
    wait_for(lambda: cluster.sql(cluster.standby, f"SELECT count(*) FROM {table}") == [(0,)],
             30, 0.1, message="the queue on the new primary drained")
    counts = {}
    for n, _ in runs(sv.out):
        counts[n] = counts.get(n, 0) + 1
    after_promotion = {n for n, at in enqueuer.acked.items() if at > cluster.promoted_at}
    if batch is not None and batch.outcome == "acknowledged":
        acked |= set(StalledBatch.ids)
    killed, promoted = cluster.failed_over_at, cluster.promoted_at
    resumed = min(at for _, at in runs(sv.out) if at > promoted)
    lost = sorted(acked - set(counts))
    return {"acknowledged": len(acked), "failed enqueues": enqueuer.failures,
            "stalled batch": batch.outcome if batch else "-",
            "noticed s": round(first_log_time(sv.log(), "lost the backend connection")
                               - killed, 2),
            "promoted s": round(promoted - killed, 2),
            "resumed s": round(resumed - killed, 2),
            "resumed after promotion s": round(resumed - promoted, 2),
            "lost": len(lost), "lost from the batch": sum(n >= BATCH_FIRST for n in lost),
            "lost from the stream": [n for n in lost if n < BATCH_FIRST][:30],
            "duplicates": sum(c - 1 for c in counts.values()),
            "acknowledged after promotion": len(after_promotion),
            "unrun after promotion": len(after_promotion - set(counts))}

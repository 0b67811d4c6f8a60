"""What pgmq supervisors tell operators and are told by them: registration, signals, pauses.

Tables (schema ``jobrunner``, created idempotently by ``jobrunner pgmq install``, the first
housekeeper tick or the first pause):
    processes      one row per live supervisor, upserted by its housekeeper at every tick
                   (about once a second): who it is, what it serves and runs, and the signals
                   operators left for it. A row whose beat is older than ``LIVE_SECONDS`` is a
                   supervisor that died without deleting it: it is not listed, and any
                   housekeeper prunes it.
    paused_queues  one row per queue an operator paused; consumers read it through
                   ``PausedQueues`` (``backends/paused.py``).
"""

import json
import os
import time

from psycopg2 import sql

from jobrunner.backends.inspector import PROCESS_SIGNALS
from jobrunner.backends.pgmq.connection import SCHEMA_DDL, TOO_DEEP, transaction
from jobrunner.backends.pgmq.jobs import list_queues, table

#: Seconds after its last beat that a supervisor counts as gone.
LIVE_SECONDS = 60
#: Seconds between a housekeeper's prunes of the rows of dead supervisors.
PRUNE_SECONDS = 60

DDL = SCHEMA_DDL + """
CREATE TABLE IF NOT EXISTS jobrunner.processes (
    identity text PRIMARY KEY,
    hostname text NOT NULL,
    pid integer NOT NULL,
    tag text NOT NULL DEFAULT '',
    started_at timestamptz NOT NULL,
    beat timestamptz NOT NULL,
    quiet boolean NOT NULL DEFAULT false,
    concurrency integer NOT NULL,
    queues text[] NOT NULL,
    running jsonb NOT NULL DEFAULT '[]',
    rss_kb bigint,
    rtt_us bigint,
    signals text[] NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS jobrunner.paused_queues (
    queue text PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT now());
"""


def ensure_tables(conn):
    """Create the schema and tables if missing (idempotent, safe from many processes)."""
    transaction(conn, lambda cur: cur.execute(DDL))


def _exists(conn, name):
    """Whether table ``name`` exists: asked first, so that a read of a database no
    supervisor registered in raises nothing (and aborts no caller's transaction)."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (name,))
        return cur.fetchone()[0]


# -- the housekeeper's side -----------------------------------------------------------------

# The upsert locks the row until the end of this one-query transaction, so a signal sent
# meanwhile waits for it and lands after the signals are taken; the UPDATE returns what it
# cleared (the subquery reads the row before the UPDATE changes it).
_BEAT = """
INSERT INTO jobrunner.processes (identity, hostname, pid, tag, started_at, beat, quiet,
                                 concurrency, queues, running, rss_kb, rtt_us)
VALUES (%(identity)s, %(hostname)s, %(pid)s, %(tag)s, to_timestamp(%(started_at)s),
        clock_timestamp(), %(quiet)s, %(concurrency)s, %(queues)s, %(running)s::jsonb,
        %(rss_kb)s, %(rtt_us)s)
ON CONFLICT (identity) DO UPDATE SET
    hostname = excluded.hostname, pid = excluded.pid, tag = excluded.tag,
    started_at = excluded.started_at, beat = excluded.beat, quiet = excluded.quiet,
    concurrency = excluded.concurrency, queues = excluded.queues, running = excluded.running,
    rss_kb = excluded.rss_kb, rtt_us = excluded.rtt_us;
UPDATE jobrunner.processes AS s SET signals = '{}'
FROM (SELECT signals FROM jobrunner.processes WHERE identity = %(identity)s) AS taken
WHERE s.identity = %(identity)s
RETURNING taken.signals
"""

_PRUNE = ("DELETE FROM jobrunner.processes "
          "WHERE beat < clock_timestamp() - make_interval(secs => %s)")


class Registration:
    """A supervisor's row, kept by its housekeeper over the housekeeper's connection."""

    def __init__(self, conn, identity, clock=time.monotonic):
        self.conn = conn
        self.identity = identity
        self.clock = clock
        self._tables_ready = False
        self._pruned_at = None
        self._rtt_us = None      # the previous beat's round trip

    def beat(self, state):
        """Upsert this supervisor's row from ``state``; returns the signals operators left
        for it (e.g. ``["TSTP"]``), taken out of the row. One round trip, and a prune of dead
        supervisors' rows once every ``PRUNE_SECONDS``."""
        if not self._tables_ready:
            ensure_tables(self.conn)
            self._tables_ready = True
        self._prune_if_due()
        params = {"identity": self.identity, "hostname": state.hostname, "pid": state.pid,
                  "tag": state.tag or "", "started_at": state.started_at,
                  "quiet": bool(state.quiet), "concurrency": state.concurrency,
                  "queues": list(state.queues), "running": json.dumps(running_entries(state)),
                  "rss_kb": rss_kb([state.pid] + [_child_pid(c) for c in state.children]),
                  "rtt_us": self._rtt_us}
        started = time.perf_counter()
        with self.conn.cursor() as cur:
            cur.execute(_BEAT, params)
            row = cur.fetchone()
        self._rtt_us = int((time.perf_counter() - started) * 1_000_000)
        return list(row[0]) if row else []

    def _prune_if_due(self):
        """Delete the rows of supervisors gone for good. Its own statement, apart from the
        beat: deleting other supervisors' rows while holding a lock on our own could deadlock
        with theirs."""
        now = self.clock()
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_SECONDS:
            return
        with self.conn.cursor() as cur:
            cur.execute(_PRUNE, (LIVE_SECONDS,))
        self._pruned_at = now

    def close(self):
        """Delete this supervisor's row: it stops being listed at once."""
        if self._tables_ready:
            with self.conn.cursor() as cur:
                cur.execute("DELETE FROM jobrunner.processes WHERE identity = %s",
                            (self.identity,))


def running_entries(state):
    """The row's ``running``: one entry per job a child of ``state`` runs. The token is the
    consumer's ``[queue, msg_id, read_ct, read_at]``: the msg_id finds the job's args later."""
    return [{"child": job.child_id, "queue": job.queue, "worker": job.worker,
             "job_id": job.job_id, "msg_id": job.token[1] if job.token else None,
             "run_at": job.started_at} for job in state.busy]


def _child_pid(child_id):
    """A child's pid: the last part of its id, ``<identity>:<pid>``."""
    tail = str(child_id).rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None


def rss_kb(pids):
    """Resident memory of ``pids`` together, in KB, from ``/proc/<pid>/statm``; None where
    none can be read (no /proc)."""
    page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
    sizes = []
    for pid in {pid for pid in pids if pid}:
        try:
            with open(f"/proc/{pid}/statm") as statm:
                sizes.append(int(statm.read().split()[1]) * page_kb)
        except (OSError, ValueError, IndexError):
            continue        # a child that just exited
    return sum(sizes) if sizes else None


# -- the operator's side --------------------------------------------------------------------

_LIVE = """
SELECT identity, hostname, pid, tag, extract(epoch FROM started_at)::float8 AS started_at,
       extract(epoch FROM beat)::float8 AS beat, quiet, concurrency, queues, running,
       rss_kb, rtt_us
FROM jobrunner.processes WHERE beat >= clock_timestamp() - make_interval(secs => %s)
ORDER BY identity
"""


def live_supervisors(conn):
    """The rows of live supervisors as dicts, ``running`` as stored (no args)."""
    if not _exists(conn, "jobrunner.processes"):
        return []
    with conn.cursor() as cur:
        cur.execute(_LIVE, (LIVE_SECONDS,))
        names = [column.name for column in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def runners(conn):
    """``{(queue, msg_id): identity}`` of the jobs live supervisors run."""
    return {(run.get("queue"), run.get("msg_id")): row["identity"]
            for row in live_supervisors(conn) for run in _runs(row)}


def _runs(row):
    running = row["running"]
    return [run for run in running if isinstance(run, dict)] if isinstance(running, list) else []


def processes(conn):
    """``Inspector.processes`` on pgmq: each running entry's ``args`` read from its queue by
    msg_id (None for a job gone since), one statement per queue."""
    rows = live_supervisors(conn)
    wanted = {}
    for row in rows:
        for run in _runs(row):
            wanted.setdefault(run.get("queue"), set()).add(run.get("msg_id"))
    args = _args(conn, wanted)
    return [{"identity": row["identity"], "hostname": row["hostname"], "pid": row["pid"],
             "tag": row["tag"], "started_at": row["started_at"], "beat": row["beat"],
             "quiet": row["quiet"], "busy": len(_runs(row)), "concurrency": row["concurrency"],
             "queues": list(row["queues"]), "rss_kb": row["rss_kb"], "rtt_us": row["rtt_us"],
             "running": [dict(run, args=args.get((run.get("queue"), run.get("msg_id"))))
                         for run in _runs(row)]}
            for row in rows]


def _args(conn, wanted):
    """``{(queue, msg_id): args}`` of the messages ``wanted`` names, ``{queue: {msg_id}}``."""
    existing = set(list_queues(conn)) if wanted else set()
    found = {}
    for queue, msg_ids in wanted.items():
        msg_ids = [m for m in msg_ids if isinstance(m, int)]
        if queue not in existing or not msg_ids:
            continue
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT msg_id, message -> 'args' FROM {} WHERE msg_id = ANY(%s)")
                        .format(table("q", queue)), (msg_ids,))
            found.update(((queue, msg_id), None if value is TOO_DEEP else value)
                         for msg_id, value in cur.fetchall())
    return found


_SIGNAL = """
UPDATE jobrunner.processes SET signals = signals || %s::text
WHERE identity = %s AND beat >= clock_timestamp() - make_interval(secs => %s)
"""


def signal(conn, identity, action):
    """``Inspector.signal`` on pgmq: leave the signal in a live supervisor's row, for its
    housekeeper's next tick; False when no live supervisor has that identity."""
    if action not in PROCESS_SIGNALS:
        raise ValueError(f"signal: unknown action {action!r}")
    if not _exists(conn, "jobrunner.processes"):
        return False

    def work(cur):
        cur.execute(_SIGNAL, (PROCESS_SIGNALS[action], identity, LIVE_SECONDS))
        return cur.rowcount == 1
    return transaction(conn, work)


# -- paused queues --------------------------------------------------------------------------

def paused_queues(conn):
    """The paused queue names, sorted; none while the table does not exist. Never raises for
    a missing table, so a consumer's transaction (if it has one) stays usable."""
    if not _exists(conn, "jobrunner.paused_queues"):
        return []
    with conn.cursor() as cur:
        cur.execute("SELECT queue FROM jobrunner.paused_queues ORDER BY queue")
        return [row[0] for row in cur.fetchall()]


def pause(conn, queue):
    """Add ``queue`` to the paused ones (a queue pgmq does not have yet may be paused)."""
    ensure_tables(conn)
    transaction(conn, lambda cur: cur.execute(
        "INSERT INTO jobrunner.paused_queues (queue) VALUES (%s) ON CONFLICT DO NOTHING",
        (queue,)))


def resume(conn, queue):
    """Take ``queue`` out of the paused ones."""
    if _exists(conn, "jobrunner.paused_queues"):
        transaction(conn, lambda cur: cur.execute(
            "DELETE FROM jobrunner.paused_queues WHERE queue = %s", (queue,)))

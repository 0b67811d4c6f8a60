"""Operator views and actions on pgmq over one connection: counts, jobs, supervisors, queues.

The modules beside this one hold the queries of each role: ``pgmq/jobs.py`` how a message is
classified (waiting, scheduled, retrying, running, dead, done) and the job listings,
``pgmq/actions.py`` the moves of jobs and the purge of a queue, ``pgmq/processes.py`` the
supervisors' registration, their signals and the paused queues, ``pgmq/history.py`` the runs
per minute. This one counts the queues (``stats``, ``depths``) and puts the roles together as
``PgmqInspector``.

Every function takes a psycopg2 connection and returns plain dicts and lists. Reading
functions only read and end their snapshot; a function that writes commits its own work.
``PgmqInspector`` decodes jsonb as consumers do (``decode_deep_json_safely``), so a body too
deep for Python's json is listed as unreadable instead of failing the whole listing.
"""

import psycopg2.errors
from psycopg2 import sql

from jobrunner.backends.inspector import QUEUE_ACTIONS, Inspector
from jobrunner.backends.pgmq import processes as supervisors
from jobrunner.backends.pgmq.actions import delete_dead, job_action, purge, retry_dead
from jobrunner.backends.pgmq.connection import decode_deep_json_safely
from jobrunner.backends.pgmq.history import history
from jobrunner.backends.pgmq.install import installed_version
from jobrunner.backends.pgmq.jobs import (HAS_ERROR, RETRYING, dead_jobs, dict_cursor,
                                          find_job, list_jobs, list_queues, table)
from jobrunner.backends.pgmq.enqueue import PgEnqueuer
from jobrunner.backends.pgmq.schedules import list_schedules, stored_schedule

#: Also reached from here by callers of the module's functions (``tests/test_admin.py``).
__all__ = ["dead_jobs", "delete_dead", "depths", "installed", "retry_dead", "stats",
           "PgmqInspector"]


def installed(conn):
    """True when pgmq's schema and functions exist in ``conn``'s database."""
    try:
        return installed_version(conn) is not None
    finally:
        conn.rollback()


# -- stats ----------------------------------------------------------------------------------

_QUEUE_COUNTS = """
SELECT count(*) FILTER (WHERE vt <= c.now) AS waiting,
       count(*) FILTER (WHERE vt > c.now AND read_ct = 0) AS scheduled,
       count(*) FILTER (WHERE vt > c.now AND read_ct > 0 AND {retrying}) AS retrying,
       count(*) FILTER (WHERE vt > c.now AND read_ct > 0
                        AND NOT coalesce({retrying}, false)) AS busy,
       extract(epoch FROM c.now - min(vt) FILTER (WHERE vt <= c.now)) AS latency,
       (SELECT count(*) FROM {archive} WHERE {has_error}) AS dead
FROM {queue}, (SELECT clock_timestamp() AS now) AS c
GROUP BY c.now
"""


def queue_stats(conn, queue):
    """Counts for one queue: waiting, scheduled, retrying, busy, dead, latency (seconds).

    Latency is how long the oldest visible message has been visible: since its send for a
    plain job, since its due time for a delayed or retried one (as Sidekiq resets
    ``enqueued_at`` when it moves a job to its queue); 0.0 when nothing waits.
    """
    query = sql.SQL(_QUEUE_COUNTS).format(
        retrying=sql.SQL(RETRYING), has_error=sql.SQL(HAS_ERROR),
        queue=table("q", queue), archive=table("a", queue))
    with dict_cursor(conn) as cur:
        cur.execute(query)
        row = cur.fetchone()
    if row is None:      # an empty table has no group; the archive may still hold dead jobs
        row = {"waiting": 0, "scheduled": 0, "retrying": 0, "busy": 0, "latency": None,
               "dead": _dead_count(conn, queue)}
    return {"name": queue, "waiting": row["waiting"], "scheduled": row["scheduled"],
            "retrying": row["retrying"], "dead": row["dead"], "busy": row["busy"],
            "latency": round(max(0.0, float(row["latency"] or 0.0)), 3)}


def _dead_count(conn, queue):
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE " + HAS_ERROR)
                    .format(table("a", queue)))
        return cur.fetchone()[0]


def stats(conn):
    """The pgmq section of ``jobrunner stats``: totals, one entry per queue (with whether it
    is paused), the live supervisors."""
    try:
        paused = set(supervisors.paused_queues(conn))
        queues = [dict(queue_stats(conn, name), paused=name in paused)
                  for name in list_queues(conn)]
        processes = supervisors.processes(conn)
    finally:
        conn.rollback()      # read-only; end the snapshot so no transaction stays open
    totals = {key: sum(q[key] for q in queues)
              for key in ("waiting", "scheduled", "retrying", "dead", "busy")}
    # pgmq keeps no processed/failed counters of the kind Sidekiq's stat:* keys are.
    totals.update(processed=None, failed=None)
    return {"totals": totals, "queues": queues, "processes": processes, "processes_note": None}


def depths(conn, queues):
    """Waiting and latency of ``queues``, and scheduled/retrying/dead summed over every queue,
    for the metrics reader.

    ``conn`` is autocommit (an inspector's), so a queue never used, whose table is missing,
    leaves the next query unharmed."""
    rows, totals = {}, {"scheduled": 0, "retrying": 0, "dead": 0}
    existing = list_queues(conn)
    for queue in dict.fromkeys(list(queues) + existing):
        try:
            row = queue_stats(conn, queue)
        except psycopg2.errors.UndefinedTable:
            row = {"waiting": 0, "latency": 0.0}      # no job was ever sent to it
        if queue in queues:
            rows[queue] = {"waiting": row["waiting"], "latency": row["latency"]}
        if queue in existing:
            for key in totals:
                totals[key] += row.get(key, 0)
    return {"queues": rows, "totals": totals}


class PgmqInspector(Inspector):
    """The pgmq ``Inspector``: the functions of this module and its siblings on one
    connection (autocommit: every statement stands alone, or a function commits its own)."""

    def __init__(self, conn):
        decode_deep_json_safely(conn)
        self.conn = conn

    def stats(self):
        return stats(self.conn)

    def depths(self, queues):
        return depths(self.conn, queues)

    def schedules(self):
        return list_schedules(self.conn)

    def stored_schedule(self, key):
        return stored_schedule(self.conn, key)

    def send_now(self, worker, encoded_args):
        return PgEnqueuer.push(worker, self.conn, [encoded_args])[0]

    def jobs(self, kind, queue=None, ids=None, worker=None, error=None, limit=None, offset=0):
        return list_jobs(self.conn, kind, queue=queue, ids=ids, worker=worker, error=error,
                         limit=limit, offset=offset)

    def job_action(self, kind, action, ids=None, queue=None):
        return job_action(self.conn, kind, action, ids=ids, queue=queue)

    def find_job(self, job_id):
        return find_job(self.conn, job_id, runners=lambda: supervisors.runners(self.conn))

    def processes(self):
        try:
            return supervisors.processes(self.conn)
        finally:
            self.conn.rollback()

    def signal(self, identity, action):
        return supervisors.signal(self.conn, identity, action)

    def queue_action(self, action, queue):
        if action not in QUEUE_ACTIONS:
            raise ValueError(f"queue_action: unknown action {action!r}")
        purged = None
        if action == "pause":
            supervisors.pause(self.conn, queue)
        elif action == "resume":
            supervisors.resume(self.conn, queue)
        else:
            purged = purge(self.conn, queue)
        return {"queue": queue, "action": action, "paused": queue in self.paused_queues(),
                "purged": purged}

    def paused_queues(self):
        try:
            return supervisors.paused_queues(self.conn)
        finally:
            self.conn.rollback()

    def history(self, minutes=60):
        return history(self.conn, minutes)

    def health(self):
        return {"version": installed_version(self.conn), "warnings": []}

    def close(self):
        self.conn.close()

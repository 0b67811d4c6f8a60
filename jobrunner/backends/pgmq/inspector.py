"""Operator queries on pgmq: queue counts, dead jobs in the archives, retry and delete of them.

Every function takes a psycopg2 connection and returns plain dicts and lists. Reading
functions only read; ``retry_dead`` and ``delete_dead`` commit their own transaction.
``PgmqInspector`` decodes jsonb as consumers do (``decode_deep_json_safely``), so a body too
deep for Python's json is listed as unreadable instead of failing the whole listing.

How a jobrunner message is classified (see ``pgmq/backend.py`` for the headers it writes):

    waiting    in ``q_<queue>``, visible now (``vt <= clock_timestamp()``)
    scheduled  hidden, never read (``read_ct = 0``): sent with a delay
    retrying   hidden, read, and its ``jobrunner_error`` header records this very attempt
               (``attempts = read_ct``): it failed and waits for its backoff
    busy       hidden and read otherwise: leased by a child that is running it now
    dead       in ``a_<queue>`` with a ``jobrunner_error`` header (archived successes have none)

A job being re-run after a failure is hidden and still carries the header of its previous
attempt; its ``read_ct`` is one higher than the header's ``attempts``, which is what tells busy
from retrying.
"""

import psycopg2
import psycopg2.errors
import psycopg2.extras
from psycopg2 import sql

from jobrunner.backends.base import Inspector
from jobrunner.backends.pgmq.connection import CHANNEL, TOO_DEEP, decode_deep_json_safely
from jobrunner.backends.pgmq.install import installed_version
from jobrunner.backends.pgmq.schedules import list_schedules

ERROR_HEADER = "jobrunner_error"
#: ``error_class`` of a dead job whose stored message cannot be decoded (docs/operations.md).
UNREADABLE = "jobrunner.Unreadable"
#: Characters of an unreadable body shown in its ``args``.
EXCERPT_CHARS = 1000
_HAS_ERROR = "headers -> 'jobrunner_error' IS NOT NULL"
_RETRYING = "headers -> 'jobrunner_error' -> 'attempts' = to_jsonb(read_ct)"


def _table(prefix, queue):
    """``pgmq.q_<queue>`` / ``pgmq.a_<queue>`` as pgmq names them (lower case), quoted.

    Any queue in ``pgmq.meta`` is shown, including ones other producers made with names our
    registry would refuse, so this quotes rather than validates.
    """
    return sql.Identifier("pgmq", f"{prefix}_{queue.lower()}")


def _cursor(conn):
    return conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor)


def installed(conn):
    """True when pgmq's schema and functions exist in ``conn``'s database."""
    try:
        return installed_version(conn) is not None
    finally:
        conn.rollback()


def list_queues(conn):
    """Every queue in ``pgmq.meta``, by name."""
    with conn.cursor() as cur:
        cur.execute("SELECT queue_name FROM pgmq.list_queues() ORDER BY queue_name")
        return [row[0] for row in cur.fetchall()]


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
        retrying=sql.SQL(_RETRYING), has_error=sql.SQL(_HAS_ERROR),
        queue=_table("q", queue), archive=_table("a", queue))
    with _cursor(conn) as cur:
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
        cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE " + _HAS_ERROR)
                    .format(_table("a", queue)))
        return cur.fetchone()[0]


def stats(conn):
    """The pgmq section of ``jobrunner stats``: totals, one entry per queue, processes."""
    try:
        queues = [queue_stats(conn, name) for name in list_queues(conn)]
    finally:
        conn.rollback()      # read-only; end the snapshot so no transaction stays open
    totals = {key: sum(q[key] for q in queues)
              for key in ("waiting", "scheduled", "retrying", "dead", "busy")}
    # pgmq keeps no processed/failed counters of the kind Sidekiq's stat:* keys are.
    totals.update(processed=None, failed=None)
    return {"totals": totals, "queues": queues, "processes": [],
            "processes_note": "pgmq supervisors do not register themselves yet"}


# -- dead jobs ------------------------------------------------------------------------------

_DEAD_ROWS = """
SELECT msg_id, read_ct, archived_at, message, headers,
       left(message::text, %s) AS excerpt FROM {archive}
WHERE {has_error} {match}
ORDER BY archived_at DESC, msg_id DESC {limit}
"""


def _match_clause(ids):
    """SQL (and params) selecting rows whose job id or msg_id is among ``ids``."""
    if ids is None:
        return sql.SQL(""), []
    msg_ids = [int(i) for i in ids if str(i).isdigit()]
    return (sql.SQL("AND (message -> 'metadata' ->> 'id' = ANY(%s) OR msg_id = ANY(%s))"),
            [[str(i) for i in ids], msg_ids])


def _dead_rows(conn, queue, ids=None, limit=None):
    match, params = _match_clause(ids)
    query = sql.SQL(_DEAD_ROWS).format(
        archive=_table("a", queue), has_error=sql.SQL(_HAS_ERROR), match=match,
        limit=sql.SQL("LIMIT %s" if limit else ""))
    with _cursor(conn) as cur:
        cur.execute(query, [EXCERPT_CHARS + 1] + params + ([limit] if limit else []))
        return cur.fetchall()


def _died_at(error, row):
    """``failed_at`` of the error header when it is a usable time, else the archive time."""
    value = error.get("failed_at")
    if not isinstance(value, bool) and isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:       # an integer too large for a float
            pass
    return row["archived_at"].timestamp()


def dead_entry(queue, row):
    """One dead job as ``jobrunner dead list`` shows it; a body or header that cannot be
    decoded is shown as unreadable, with why and an excerpt of the body."""
    body, headers = row["message"], row["headers"]
    error = headers.get(ERROR_HEADER) if isinstance(headers, dict) else None
    error = error if isinstance(error, dict) else {}
    metadata = body.get("metadata") if isinstance(body, dict) else None
    metadata = metadata if isinstance(metadata, dict) else {}
    attempts = error.get("attempts")
    entry = {"backend": "pgmq", "queue": queue, "id": metadata.get("id"),
             "msg_id": row["msg_id"], "worker": metadata.get("worker_name"),
             "args": body.get("args") if isinstance(body, dict) else None,
             "error_class": error.get("error_class"), "error_message": error.get("error_message"),
             "attempts": attempts if isinstance(attempts, int) else row["read_ct"],
             "died_at": _died_at(error, row)}
    unreadable = [f"message {part} is nested too deeply to decode"
                  for part, value in (("body", body), ("headers", headers)) if value is TOO_DEEP]
    if unreadable:
        reason = "; ".join(unreadable)
        if entry["error_message"] and entry["error_message"] != reason:
            reason += f" (it died with {entry['error_class']}: {entry['error_message']})"
        text = row["excerpt"]
        cut = text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"
        entry.update(worker=None, args=[cut], error_class=UNREADABLE, error_message=reason)
    return entry


def _dead_pairs(conn, queue=None, ids=None, limit=None):
    """``(entry, whether its body is a JSON object)`` of dead jobs, as ``dead_jobs``."""
    try:
        names = [name for name in list_queues(conn) if queue is None or name == queue]
        pairs = []
        for name in names:
            pairs += [(dead_entry(name, row), isinstance(row["message"], dict))
                      for row in _dead_rows(conn, name, ids, limit)]
    finally:
        conn.rollback()
    pairs.sort(key=lambda pair: (pair[0]["died_at"], pair[0]["msg_id"]), reverse=True)
    return pairs[:limit] if limit else pairs


def dead_jobs(conn, queue=None, ids=None, limit=None):
    """Dead jobs, newest first; only ``queue``'s, only those named by ``ids`` (job ids or
    msg_ids), at most ``limit`` (None: all)."""
    return [entry for entry, _ in _dead_pairs(conn, queue, ids, limit)]


# Take the archive rows out and send their bodies again in one statement, so a job is never
# both dead and live, and two operators retrying at once cannot send it twice (the second
# DELETE finds nothing). Our error header goes; any header a producer set stays.
_RETRY = """
WITH dead AS (
    DELETE FROM {archive} WHERE msg_id = ANY(%(msg_ids)s) AND {has_error}
    RETURNING msg_id, message,
              CASE WHEN jsonb_typeof(headers) = 'object'
                   THEN nullif(headers - 'jobrunner_error', '{{}}'::jsonb) END AS headers
), sent AS (
    SELECT dead.msg_id AS old_msg_id,
           (SELECT pgmq.send(%(queue)s, dead.message, dead.headers)) AS new_msg_id
    FROM dead ORDER BY dead.msg_id
)
SELECT old_msg_id, new_msg_id, pg_notify(%(channel)s, %(queue)s) FROM sent
"""


def retry_dead(conn, queue, msg_ids):
    """Send dead jobs back to ``queue`` as new messages and drop their archive rows, in one
    transaction; returns ``{old msg_id: new msg_id}`` for the rows that were still dead.

    The new message has ``read_ct`` 0, so the job gets its full retries again; its body,
    and with it the job id, is unchanged.
    """
    query = sql.SQL(_RETRY).format(archive=_table("a", queue), has_error=sql.SQL(_HAS_ERROR))
    try:
        with conn.cursor() as cur:
            cur.execute(query, {"msg_ids": list(msg_ids), "queue": queue, "channel": CHANNEL})
            moved = {old: new for old, new, _ in cur.fetchall()}
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return moved


def delete_dead(conn, queue, msg_ids):
    """Delete dead jobs from ``queue``'s archive; returns the msg_ids deleted."""
    query = sql.SQL("DELETE FROM {} WHERE msg_id = ANY(%s) AND " + _HAS_ERROR +
                    " RETURNING msg_id").format(_table("a", queue))
    try:
        with conn.cursor() as cur:
            cur.execute(query, (list(msg_ids),))
            deleted = [row[0] for row in cur.fetchall()]
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return deleted


def dead_action(conn, action, ids=None, queue=None):
    """``Inspector.dead_action`` on pgmq: each queue's archive in its own transaction.

    An id is a job id (``metadata.id``) or a msg_id; a msg_id that is dead in several queues is
    refused as ambiguous unless ``queue`` is given.
    """
    pairs = _dead_pairs(conn, queue=queue, ids=ids)
    ambiguous = _ambiguous_msg_ids([e for e, _ in pairs], ids) if queue is None else []
    pairs = [(e, job) for e, job in pairs
             if str(e["msg_id"]) not in ambiguous or e["id"] in (ids or ())]
    # A body that is not a JSON object could only die again: retry leaves it, as the other
    # backends do.
    skipped = [dict(e, reason="not a job; it cannot run")
               for e, job in pairs if action == "retry" and not job]
    by_queue = {}
    for entry, job in pairs:
        if job or action != "retry":
            by_queue.setdefault(entry["queue"], []).append(entry)
    done = []
    for name, group in by_queue.items():
        msg_ids = [e["msg_id"] for e in group]
        if action == "retry":
            moved = retry_dead(conn, name, msg_ids)
            done += [dict(e, new_msg_id=moved[e["msg_id"]]) for e in group if e["msg_id"] in moved]
        else:
            deleted = set(delete_dead(conn, name, msg_ids))
            done += [e for e in group if e["msg_id"] in deleted]
    return done, skipped, ambiguous


def _ambiguous_msg_ids(entries, ids):
    """The given msg_ids that name dead jobs in more than one queue."""
    queues = {}
    for entry in entries:
        queues.setdefault(str(entry["msg_id"]), set()).add(entry["queue"])
    return [i for i in dict.fromkeys(ids or ()) if len(queues.get(i, ())) > 1]


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
    """The pgmq ``Inspector``: the functions above on one connection."""

    def __init__(self, conn):
        decode_deep_json_safely(conn)
        self.conn = conn

    def stats(self):
        return stats(self.conn)

    def depths(self, queues):
        return depths(self.conn, queues)

    def schedules(self):
        return list_schedules(self.conn)

    def dead_jobs(self, queue=None, ids=None, limit=None):
        return dead_jobs(self.conn, queue=queue, ids=ids, limit=limit)

    def dead_action(self, action, ids=None, queue=None):
        return dead_action(self.conn, action, ids=ids, queue=queue)

    def health(self):
        return {"version": installed_version(self.conn), "warnings": []}

    def close(self):
        self.conn.close()

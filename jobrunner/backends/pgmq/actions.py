"""Operator moves on pgmq: run, kill or delete a job outside its queue, purge a queue.

Every move is one guarded statement per queue (kill: one transaction), whose WHERE repeats the
classification of ``pgmq/jobs.py`` with ``clock_timestamp()``: an operator whose statement
waited on another's row lock re-reads the row after the wait, finds it moved, and leaves it,
so two operators acting at once move a job once. Each function commits its own work.
"""

from psycopg2 import sql

from jobrunner.backends.inspector import ACTIONS, KILLED, KILLED_MESSAGE
from jobrunner.backends.pgmq.connection import CHANNEL, transaction
from jobrunner.backends.pgmq.jobs import (HAS_ERROR, KIND_ROWS, KIND_TABLE, job_pairs,
                                          list_queues, table)

_GUARD = "msg_id = ANY(%(msg_ids)s) AND {rows}"


def _guard(kind):
    """Rows named by ``%(msg_ids)s`` that are still of ``kind`` now."""
    return sql.SQL(_GUARD.format(rows=KIND_ROWS[kind].format(now="clock_timestamp()")))


def _returned_ids(conn, query, params):
    """Run one statement that returns msg_ids first; commit; the msg_ids."""
    def work(cur):
        cur.execute(query, params)
        return [row[0] for row in cur.fetchall()]
    return transaction(conn, work)


# -- scheduled and retrying -----------------------------------------------------------------

# Visible now, read_ct and headers unchanged: a retrying job keeps its attempts, a scheduled one
# runs as its first. The NOTIFY wakes the children, as an enqueue does.
_RUN_NOW = """
WITH due AS (UPDATE {table} SET vt = clock_timestamp() WHERE {guard} RETURNING msg_id)
SELECT msg_id, pg_notify(%(channel)s, %(queue)s) FROM due
"""

# Dead keeps the last error; one that never failed gets KILLED, counting no failed run.
_KILL_MARK = """
UPDATE {table} SET headers = CASE WHEN {has_error} THEN headers ELSE
    (CASE WHEN jsonb_typeof(headers) = 'object' THEN headers ELSE '{{}}'::jsonb END)
    || jsonb_build_object('jobrunner_error', jsonb_build_object(
        'error_class', %(error_class)s::text, 'error_message', %(error_message)s::text,
        'attempts', read_ct, 'failed_at', extract(epoch FROM clock_timestamp()),
        'backtrace', '[]'::jsonb)) END
WHERE {guard} RETURNING msg_id
"""


def run_now(conn, kind, queue, msg_ids):
    """Make scheduled or retrying messages visible now; returns the msg_ids moved."""
    query = sql.SQL(_RUN_NOW).format(table=table("q", queue), guard=_guard(kind))
    return _returned_ids(conn, query, {"msg_ids": list(msg_ids), "channel": CHANNEL,
                                       "queue": queue})


def kill(conn, kind, queue, msg_ids):
    """Archive scheduled or retrying messages as dead; returns the msg_ids moved.

    The UPDATE marks and locks the rows that are still of ``kind``; pgmq's own ``archive``
    (which knows its version's columns) then moves exactly those, in the same transaction.
    """
    query = sql.SQL(_KILL_MARK).format(table=table("q", queue), guard=_guard(kind),
                                       has_error=sql.SQL(HAS_ERROR))

    def work(cur):
        cur.execute(query, {"msg_ids": list(msg_ids), "error_class": KILLED,
                            "error_message": KILLED_MESSAGE})
        marked = [row[0] for row in cur.fetchall()]
        if marked:
            cur.execute("SELECT pgmq.archive(%s, %s::bigint[])", (queue, marked))
        return marked
    return transaction(conn, work)


def delete(conn, kind, queue, msg_ids):
    """Delete jobs of ``kind`` (dead ones from the archive); returns the msg_ids deleted."""
    query = sql.SQL("DELETE FROM {table} WHERE {guard} RETURNING msg_id").format(
        table=table(KIND_TABLE[kind], queue), guard=_guard(kind))
    return _returned_ids(conn, query, {"msg_ids": list(msg_ids)})


# -- dead -----------------------------------------------------------------------------------

# Take the archive rows out and send their bodies again in one statement, so a job is never
# both dead and live, and two operators retrying at once cannot send it twice (the second
# DELETE finds nothing). Our error header goes; any header a producer set stays.
_RETRY_DEAD = """
WITH dead AS (
    DELETE FROM {archive} WHERE {guard}
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
    query = sql.SQL(_RETRY_DEAD).format(archive=table("a", queue), guard=_guard("dead"))

    def work(cur):
        cur.execute(query, {"msg_ids": list(msg_ids), "queue": queue, "channel": CHANNEL})
        return {old: new for old, new, _ in cur.fetchall()}
    return transaction(conn, work)


def delete_dead(conn, queue, msg_ids):
    """Delete dead jobs from ``queue``'s archive; returns the msg_ids deleted."""
    return delete(conn, "dead", queue, msg_ids)


# -- the operator's request -----------------------------------------------------------------

_MOVES = {"run": run_now, "kill": kill, "delete": delete}


def job_action(conn, kind, action, ids=None, queue=None):
    """``Inspector.job_action`` on pgmq: each queue's jobs moved in their own statement.

    An id is a job id (``metadata.id``) or a msg_id; a msg_id that names jobs of ``kind`` in
    several queues is refused as ambiguous unless ``queue`` is given.
    """
    if action not in ACTIONS.get(kind, ()):
        raise ValueError(f"job_action: {action!r} is not an action on {kind} jobs")
    pairs = job_pairs(conn, kind, queue=queue, ids=ids)
    ambiguous = _ambiguous_msg_ids([e for e, _ in pairs], ids) if queue is None else []
    pairs = [(e, job) for e, job in pairs
             if str(e["msg_id"]) not in ambiguous or e["id"] in (ids or ())]
    # A body that is not a JSON object could only fail again: run leaves it, as the other
    # backends do.
    skipped = [dict(e, reason="not a job; it cannot run")
               for e, job in pairs if action == "run" and not job]
    by_queue = {}
    for entry, job in pairs:
        if job or action != "run":
            by_queue.setdefault(entry["queue"], []).append(entry)
    done = []
    for name, group in by_queue.items():
        msg_ids = [e["msg_id"] for e in group]
        if kind == "dead" and action == "run":
            moved = retry_dead(conn, name, msg_ids)
            done += [dict(e, new_msg_id=moved[e["msg_id"]]) for e in group if e["msg_id"] in moved]
        else:
            moved = set(_MOVES[action](conn, kind, name, msg_ids))
            done += [e for e in group if e["msg_id"] in moved]
    return done, skipped, ambiguous


def _ambiguous_msg_ids(entries, ids):
    """The given msg_ids that name jobs in more than one queue."""
    queues = {}
    for entry in entries:
        queues.setdefault(str(entry["msg_id"]), set()).add(entry["queue"])
    return [i for i in dict.fromkeys(ids or ()) if len(queues.get(i, ())) > 1]


def purge(conn, queue):
    """Delete the messages waiting in ``queue`` now; returns how many (0 for a queue pgmq
    does not have). A message a child leases meanwhile is hidden by then, and stays."""
    if queue not in list_queues(conn):
        return 0
    query = sql.SQL("DELETE FROM {} WHERE vt <= clock_timestamp()").format(table("q", queue))

    def work(cur):
        cur.execute(query)
        return cur.rowcount
    return transaction(conn, work)

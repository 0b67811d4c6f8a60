"""The guarded statements that read and settle pgmq messages, written as plain SQL.

Each one names the message and the read it was made for (``msg_id``, ``read_ct`` and, on pgmq
1.13 tables, ``last_read_at``), so a child whose lease ran out, or a recovery run twice,
changes nothing about a message another child has read since. pgmq's own ``set_vt``,
``delete`` and ``archive`` do not check ownership; ``read`` is written out so the server does
not plan its dynamic SQL on every fetch.
"""

import json
import time

from jobrunner.backends.pgmq import check_queue_name
from jobrunner.backends.pgmq.connection import CHANNEL


def queue_table(prefix, queue):
    """The quoted name of a queue's table: prefix "q" (live messages) or "a" (archive)."""
    check_queue_name(queue)    # names are checked at registration; this guards the SQL
    return f'pgmq."{prefix}_{queue}"'


def error_headers(error, attempts):
    """The headers patch that records why a run failed: class, message, which attempt, when,
    and as much of the traceback as the worker keeps (``ErrorInfo.stored_backtrace``)."""
    return json.dumps({"jobrunner_error": {
        "error_class": error.error_class, "error_message": error.message,
        "attempts": attempts, "failed_at": time.time(),
        "backtrace": error.stored_backtrace()}})


def read_sql(queue, last_read_at):
    """The statement ``pgmq.read(queue, vt, qty)`` runs, written out: lease up to ``qty``
    visible messages, oldest first, skipping rows other readers hold. Parameters: the lease
    in seconds, then ``qty``. Written here so the server plans a plain statement instead of
    the function's dynamic SQL on every call."""
    table = queue_table("q", queue)
    touched = ", last_read_at = clock_timestamp()" if last_read_at else ""
    read_at = "last_read_at" if last_read_at else "NULL::timestamptz AS last_read_at"
    # UPDATE ... RETURNING gives rows in the order it met them on disk, where a released
    # message was rewritten at the end: the consumer sorts the batch back into queue order.
    return (f"UPDATE {table} SET vt = clock_timestamp() + make_interval(secs => %s), "
            f"read_ct = read_ct + 1{touched} WHERE msg_id IN (SELECT msg_id FROM {table} "
            "WHERE vt <= clock_timestamp() ORDER BY msg_id LIMIT %s FOR UPDATE SKIP LOCKED) "
            f"RETURNING msg_id, read_ct, enqueued_at, {read_at}, message, headers")


def survey_sql(queues, paused_table):
    """One statement that looks at many queues at once: ``waits``, the seconds until each
    queue's earliest message is visible (0 or less: visible now; NULL: empty), each from the
    first entry of pgmq's index on ``vt``; and ``paused``, the paused queue names, or NULL
    with ``paused_table`` False, where ``paused_exists`` tells whether that table exists by
    now."""
    waits = ", ".join(f"extract(epoch FROM (SELECT min(vt) FROM {queue_table('q', queue)}) "
                      "- clock_timestamp())" for queue in queues)
    paused = ("ARRAY(SELECT queue FROM jobrunner.paused_queues)" if paused_table
              else "NULL::text[]")
    return (f"SELECT ARRAY[{waits}]::float8[] AS waits, {paused} AS paused, "
            "to_regclass('jobrunner.paused_queues') IS NOT NULL AS paused_exists")


def dead_rows_sql(queues):
    """``(sql, params)``: each of ``queues`` whose table holds at least the given number of
    dead row versions (the parameter after these), with that count, from the statistics
    Postgres keeps (``pg_stat_user_tables``), not a scan."""
    return ("SELECT t.queue, s.n_dead_tup FROM unnest(%s::text[], %s::text[]) AS t(queue, name) "
            "JOIN pg_stat_user_tables s ON s.relid = to_regclass(t.name) "
            "WHERE s.n_dead_tup >= %s ORDER BY s.n_dead_tup DESC",
            [list(queues), [queue_table("q", queue) for queue in queues]])


def vacuum_sql(queue):
    """VACUUM of one queue table. SKIP_LOCKED: a table another VACUUM (autovacuum, another
    supervisor's housekeeper) is on is skipped, with a warning, rather than waited for."""
    return f"VACUUM (SKIP_LOCKED) {queue_table('q', queue)}"


#: Acks, per action, guarded by read_ct. Parameters: (the queue name for archive,) msg_ids,
#: read_cts. A DELETE re-checks read_ct on a row another reader changed meanwhile.
SETTLE_SQL = {
    "delete": ("DELETE FROM {table} q USING unnest(%s::bigint[], %s::int[]) AS a(msg_id, read_ct) "
               "WHERE q.msg_id = a.msg_id AND q.read_ct = a.read_ct; "),
    "archive": ("SELECT pgmq.archive(%s, ARRAY(SELECT q.msg_id FROM {table} q "
                "JOIN unnest(%s::bigint[], %s::int[]) AS a(msg_id, read_ct) USING (msg_id) "
                "WHERE q.read_ct = a.read_ct FOR UPDATE OF q)); "),
}


def ack_action(registry, worker_name):
    """What an ack does to a message of ``worker_name``: "delete", or "archive" when the
    worker's ``success_action`` says so."""
    worker = registry.lookup(worker_name)
    return "archive" if worker and worker.success_action == "archive" else "delete"


def acks_sql(acked):
    """``(sql, params)`` settling ``{(queue, action): [(msg_id, read_ct), ...]}``, one
    statement per queue and action. Only rows still at the read_ct that ran are touched: a
    child whose lease ran out must not settle a message another child has read since (the
    note above ``retry_later``)."""
    sql, params = "", []
    for (queue, action), receipts in acked.items():
        sql += SETTLE_SQL[action].format(table=queue_table("q", queue))
        params += ([queue] if action == "archive" else []) + [
            [m for m, _ in receipts], [r for _, r in receipts]]
    return sql, params


# Merge our error into whatever headers the producer set (pgmq's client may set some).
MERGE_HEADERS = ("CASE WHEN jsonb_typeof(headers) = 'object' THEN headers ELSE '{}'::jsonb END"
                  " || %s::jsonb")


# Every settle below touches the message only while it is still at the read being settled:
# its read_ct (``attempts``) and, where the table records it (pgmq 1.13), its last_read_at
# (``read_at``). A release lowers read_ct, so after another child reads the message again
# read_ct alone would match once more; a child that hung past its lease, or whose job
# recovery put back, changes nothing. pgmq's own set_vt/archive do not check ownership.

def _same_read(read_at):
    """The WHERE clause naming one read of a message, and its parameters after msg_id."""
    if read_at is None:
        return "msg_id = %s AND read_ct = %s", ()
    return "msg_id = %s AND read_ct = %s AND last_read_at = %s", (read_at,)


def retry_later(cursor, queue, msg_id, error, attempts, delay, read_at=None):
    """Hide a failed message for ``delay`` seconds, with ``error`` recorded in its headers.

    The same change as pgmq's ``set_vt``, in one guarded UPDATE.
    """
    where, extra = _same_read(read_at)
    cursor.execute(
        f"UPDATE {queue_table('q', queue)} SET headers = {MERGE_HEADERS}, "
        f"vt = clock_timestamp() + make_interval(secs => %s) WHERE {where}",
        (error_headers(error, attempts), max(0, int(round(delay))), msg_id, attempts) + extra)


def archive(cursor, queue, msg_id, error, attempts, read_at=None):
    """Archive a message as dead, with ``error`` kept in its headers; one round trip."""
    table = queue_table("q", queue)
    where, extra = _same_read(read_at)
    cursor.execute(
        f"UPDATE {table} SET headers = {MERGE_HEADERS} WHERE {where}; "
        f"SELECT pgmq.archive(%s, m.msg_id) FROM (SELECT msg_id FROM {table} "
        f"WHERE {where} FOR UPDATE) AS m",
        (error_headers(error, attempts), msg_id, attempts) + extra
        + (queue, msg_id, attempts) + extra)


def release(cursor, receipts):
    """Make messages visible now, without counting the interrupted read as an attempt.

    ``receipts`` are ``(queue, msg_id, read_ct, read_at)`` (a consumer's receipts or tokens):
    a message is released only while it is still at that read. ``read_at`` (``last_read_at``,
    pgmq 1.13; None on 1.5) tells two reads with the same read_ct apart: a release lowers
    read_ct, so after another child reads the message again the read_ct alone would match
    once more. One statement per queue, and a NOTIFY that wakes idle children; returns how
    many were released.
    """
    by_queue = {}
    for queue, *read in receipts:
        by_queue.setdefault(queue, []).append(read)
    released = 0
    for queue, reads in by_queue.items():
        since = [read_at for _, _, read_at in reads]
        same_read = " AND q.last_read_at = a.read_at" if any(since) else ""
        cursor.execute(f"UPDATE {queue_table('q', queue)} q SET vt = clock_timestamp(), "
                       "read_ct = greatest(q.read_ct - 1, 0) "
                       "FROM unnest(%s::bigint[], %s::int[], %s::timestamptz[]) "
                       "AS a(msg_id, read_ct, read_at) "
                       f"WHERE q.msg_id = a.msg_id AND q.read_ct = a.read_ct{same_read}",
                       ([m for m, _, _ in reads], [r for _, r, _ in reads], since))
        count = cursor.rowcount
        if count > 0:
            # Idle children wait for a NOTIFY: without one they would see these messages
            # only at their next poll.
            cursor.execute(f"NOTIFY {CHANNEL}, '{queue}'")
        released += count
    return released

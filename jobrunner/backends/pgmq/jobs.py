"""Where a job is on pgmq: the state of a message, its job entry, the listings and the lookup.

A message's state follows from its table, ``vt``, ``read_ct`` and the ``jobrunner_error``
header a failed run writes (``pgmq/sql.py``):

    waiting    in ``q_<queue>``, visible now (``vt <= clock_timestamp()``)
    scheduled  hidden, never read (``read_ct = 0``): sent with a delay
    retrying   hidden, read, and its header records this very attempt (``attempts = read_ct``):
               it failed and waits for its backoff
    running    hidden and read otherwise: leased by a child that is running it now
    dead       in ``a_<queue>`` with a ``jobrunner_error`` header
    done       in ``a_<queue>`` without one (a success of a worker that archives them)

A job being re-run after a failure is hidden and still carries the header of its previous
attempt; its ``read_ct`` is one higher than the header's ``attempts``, which tells running from
retrying. Reading functions only read, and end their snapshot (``rollback``) so that a caller's
transactional connection is left idle.
"""

import psycopg2.extras
from psycopg2 import sql

from jobrunner.backends.pgmq.connection import TOO_DEEP

ERROR_HEADER = "jobrunner_error"
#: ``error_class`` of a job whose stored message cannot be decoded (docs/operations.md).
UNREADABLE = "jobrunner.Unreadable"
#: Characters of an unreadable body shown in its ``args``.
EXCERPT_CHARS = 1000

HAS_ERROR = "headers -> 'jobrunner_error' IS NOT NULL"
RETRYING = "headers -> 'jobrunner_error' -> 'attempts' = to_jsonb(read_ct)"

#: The table of each kind ``Inspector.jobs`` lists, the rows of that kind in it, and their order.
#: ``{now}`` is the current time: ``clock_timestamp()`` in a guard, so that a statement that
#: waited on a row lock judges the row as it is after the wait; ``(SELECT clock_timestamp())``
#: in a listing, evaluated once, so that the index on ``vt`` bounds the scan.
KIND_TABLE = {"scheduled": "q", "retrying": "q", "dead": "a"}
KIND_ROWS = {"scheduled": "vt > {now} AND read_ct = 0",
             "retrying": "vt > {now} AND read_ct > 0 AND " + RETRYING,
             "dead": HAS_ERROR}
KIND_ORDER = {"scheduled": "vt, msg_id", "retrying": "vt, msg_id",
              "dead": "archived_at DESC, msg_id DESC"}
LISTING_NOW = "(SELECT clock_timestamp())"

_QUEUE_STATE = ("CASE WHEN vt <= clock_timestamp() THEN 'waiting' WHEN read_ct = 0 THEN "
                f"'scheduled' WHEN coalesce({RETRYING}, false) THEN 'retrying' ELSE 'running' END")
_ARCHIVE_STATE = f"CASE WHEN {HAS_ERROR} THEN 'dead' ELSE 'done' END"
_COLUMNS = ("msg_id, read_ct, enqueued_at, vt, {archived_at} AS archived_at, message, headers, "
            "left(message::text, %(excerpt)s) AS excerpt")


def table(prefix, queue):
    """``pgmq.q_<queue>`` / ``pgmq.a_<queue>`` as pgmq names them (lower case), quoted.

    Any queue in ``pgmq.meta`` is shown, including ones other producers made with names our
    registry would refuse, so this quotes rather than validates.
    """
    return sql.Identifier("pgmq", f"{prefix}_{queue.lower()}")


def columns(prefix):
    """The columns a job entry is made of, for a queue table (no archived_at) or an archive."""
    return sql.SQL(_COLUMNS.format(archived_at="archived_at" if prefix == "a"
                                   else "NULL::timestamptz"))


def dict_cursor(conn):
    return conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor)


def list_queues(conn):
    """Every queue in ``pgmq.meta``, by name."""
    with conn.cursor() as cur:
        cur.execute("SELECT queue_name FROM pgmq.list_queues() ORDER BY queue_name")
        return [row[0] for row in cur.fetchall()]


# -- entries --------------------------------------------------------------------------------

def _error_of(headers):
    error = headers.get(ERROR_HEADER) if isinstance(headers, dict) else None
    return error if isinstance(error, dict) else {}


def _seconds(value):
    """``value`` as epoch seconds when it is a usable number, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:       # an integer too large for a float
        return None


def _died_at(error, row):
    """``failed_at`` of the error header when it is a usable time, else the archive time."""
    failed_at = _seconds(error.get("failed_at"))
    return failed_at if failed_at is not None else row["archived_at"].timestamp()


def job_entry(queue, row, state):
    """One job as the ``Inspector`` entries show it (``backends/inspector.py``); a body or header
    that cannot be decoded is shown as unreadable, with why and an excerpt of the body."""
    body, headers = row["message"], row["headers"]
    error = _error_of(headers)
    metadata = body.get("metadata") if isinstance(body, dict) else None
    metadata = metadata if isinstance(metadata, dict) else {}
    attempts = error.get("attempts")
    if isinstance(attempts, bool) or not isinstance(attempts, int):
        # A dead row always failed: without a usable count, its reads are the best guess.
        attempts = row["read_ct"] if state == "dead" else 0
    entry = {"backend": "pgmq", "state": state, "queue": queue, "id": metadata.get("id"),
             "msg_id": row["msg_id"], "worker": metadata.get("worker_name"),
             "args": body.get("args") if isinstance(body, dict) else None,
             "error_class": error.get("error_class"), "error_message": error.get("error_message"),
             "attempts": attempts, "failed_at": _seconds(error.get("failed_at")),
             "run_at": row["vt"].timestamp() if state in ("scheduled", "retrying") else None,
             "died_at": _died_at(error, row) if state == "dead" else None}
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


def is_job(row):
    """Whether a row's body is a JSON object: anything else could only fail again if run."""
    return isinstance(row["message"], dict)


# -- listing --------------------------------------------------------------------------------

_LIST = """
SELECT {columns} FROM {table}
WHERE {rows}{filters}
ORDER BY {order} LIMIT %(limit)s OFFSET %(offset)s
"""


def _like(text):
    """An ILIKE pattern finding ``text`` anywhere, its wildcards taken literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _filters(ids, worker, error):
    """The SQL (each part opening with AND) and parameters of ``Inspector.jobs``' filters."""
    parts, params = [], {}
    if ids is not None:
        parts.append("(message -> 'metadata' ->> 'id' = ANY(%(ids)s) OR msg_id = ANY(%(msg_ids)s))")
        params.update(ids=[str(i) for i in ids],
                      msg_ids=[int(i) for i in ids if str(i).isdigit() and int(i) < 2 ** 63])
    if worker is not None:
        parts.append("message -> 'metadata' ->> 'worker_name' = %(worker)s")
        params["worker"] = worker
    if error is not None:
        parts.append("(headers -> 'jobrunner_error' ->> 'error_class' ILIKE %(error)s "
                     "OR headers -> 'jobrunner_error' ->> 'error_message' ILIKE %(error)s)")
        params["error"] = _like(error)
    return sql.SQL("".join(" AND " + part for part in parts)), params


def _rows(conn, kind, queue, filters, limit, offset):
    """One queue's rows of ``kind`` in the listing's order, paged by the server."""
    where, params = filters
    prefix = KIND_TABLE[kind]
    query = sql.SQL(_LIST).format(
        columns=columns(prefix), table=table(prefix, queue),
        rows=sql.SQL(KIND_ROWS[kind].format(now=LISTING_NOW)), filters=where,
        order=sql.SQL(KIND_ORDER[kind]))
    with dict_cursor(conn) as cur:
        cur.execute(query, dict(params, excerpt=EXCERPT_CHARS + 1, limit=limit, offset=offset))
        return cur.fetchall()


def _sort_key(kind):
    """The listing's order across queues, as each queue's ORDER BY has it."""
    if kind == "dead":
        return lambda item: (item[1]["archived_at"], item[1]["msg_id"])
    return lambda item: (item[1]["vt"], item[1]["msg_id"], str(item[2]["id"]))


def job_pairs(conn, kind, queue=None, ids=None, worker=None, error=None, limit=None, offset=0):
    """``(entry, whether its body is a job)`` of the jobs of ``kind``, as ``Inspector.jobs``
    lists them. One queue is paged by the server; several are each read up to the end of the
    page and merged here."""
    if kind not in KIND_TABLE:
        raise ValueError(f"jobs: unknown kind {kind!r}")
    if ids is not None and not list(ids):
        return []
    limit, offset = limit or None, max(0, int(offset or 0))
    filters = _filters(ids, worker, error)
    try:
        names = [name for name in list_queues(conn) if queue is None or name == queue]
        if len(names) == 1:
            found = [(names[0], row) for row in _rows(conn, kind, names[0], filters, limit, offset)]
            offset = 0
        else:
            window = None if limit is None else offset + limit
            found = [(name, row) for name in names
                     for row in _rows(conn, kind, name, filters, window, 0)]
    finally:
        conn.rollback()     # read-only; end the snapshot so no transaction stays open
    items = [(name, row, job_entry(name, row, kind)) for name, row in found]
    items.sort(key=_sort_key(kind), reverse=kind == "dead")
    items = items[offset:offset + limit] if limit is not None else items[offset:]
    return [(entry, is_job(row)) for _, row, entry in items]


def list_jobs(conn, kind, queue=None, ids=None, worker=None, error=None, limit=None, offset=0):
    """``Inspector.jobs`` on pgmq."""
    return [entry for entry, _ in job_pairs(conn, kind, queue, ids, worker, error, limit, offset)]


def dead_jobs(conn, queue=None, ids=None, limit=None):
    """Dead jobs, newest first; only ``queue``'s, only those named by ``ids`` (job ids or
    msg_ids), at most ``limit`` (None: all)."""
    return list_jobs(conn, "dead", queue=queue, ids=ids, limit=limit)


# -- one job, wherever it is ----------------------------------------------------------------

_FIND = """
SELECT {queue} AS queue, {state} AS state, {columns} FROM {table}
WHERE message -> 'metadata' ->> 'id' = %(id)s OR msg_id = %(msg_id)s
"""


def find_job(conn, job_id, runners=None):
    """``Inspector.find_job`` on pgmq: every queue table and archive, in one statement.

    ``runners`` is called, only when a job is running, for ``{(queue, msg_id): identity}``
    of the jobs the live supervisors run. No index covers the job id, so each table is
    scanned; a msg_id is found by its primary key.
    """
    job_id = str(job_id)
    msg_id = int(job_id) if job_id.isdigit() and int(job_id) < 2 ** 63 else None
    try:
        names = list_queues(conn)
        if not names:
            return []
        parts = [sql.SQL(_FIND).format(queue=sql.Literal(name), state=sql.SQL(state),
                                       columns=columns(prefix), table=table(prefix, name))
                 for name in names
                 for prefix, state in (("q", _QUEUE_STATE), ("a", _ARCHIVE_STATE))]
        with dict_cursor(conn) as cur:
            cur.execute(sql.SQL(" UNION ALL ").join(parts) + sql.SQL(" ORDER BY queue, msg_id"),
                        {"id": job_id, "msg_id": msg_id, "excerpt": EXCERPT_CHARS + 1})
            rows = cur.fetchall()
        running = any(row["state"] == "running" for row in rows)
        placed = runners() if running and runners else {}
    finally:
        conn.rollback()
    found = []
    for row in rows:
        backtrace = _error_of(row["headers"]).get("backtrace")
        found.append(dict(
            job_entry(row["queue"], row, row["state"]),
            enqueued_at=row["enqueued_at"].timestamp() if row["enqueued_at"] else None,
            backtrace=[str(line) for line in backtrace] if isinstance(backtrace, list) else [],
            process=placed.get((row["queue"], row["msg_id"])) if row["state"] == "running"
            else None))
    return found

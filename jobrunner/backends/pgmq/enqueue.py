"""Enqueue on pgmq: the caller's connection (psycopg2, psycopg 3, or Django's around either) and
transaction, one round trip, no commit."""

import functools
import json

from jobrunner.backends.base import Enqueuer
from jobrunner.backends.pgmq.connection import CHANNEL, MISSING_PGMQ
from jobrunner.backends.pgmq.drivers import django_connection, driver_of, is_framework_wrapper
from jobrunner.backends.pgmq.sql import queue_table
from jobrunner.errors import BackendUnavailable
from jobrunner.job import TRACE_FIELD, new_job_ids


_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def envelope_texts(worker_name, encoded_args, job_ids, metadata=None):
    """The message bodies, in Roadster's envelope, of jobs whose args are already JSON text.

    Each is the compact JSON of ``{"metadata": {"id": <id>, "worker_name": <name>,
    **metadata}, "args": <args>}``; the part shared by every job is encoded once.
    """
    middle = '","worker_name":' + _encode_json(worker_name)
    if metadata:
        middle += "," + _encode_json(metadata)[1:-1]
    middle += '},"args":'
    return [f'{{"metadata":{{"id":"{job_id}{middle}{args}}}'
            for job_id, args in zip(job_ids, encoded_args)]


class PgEnqueuer(Enqueuer):
    """Enqueues on a psycopg2 or psycopg 3 connection, or ``django.db.connection``, inside the
    caller's transaction, never committing."""

    backend = "pgmq"

    @classmethod
    def push(cls, worker, conn, encoded_args, at=None, carrier=None):
        ids = new_job_ids(len(encoded_args))
        headers = _encode_json({TRACE_FIELD: dict(carrier)}) if carrier else None
        send(conn, worker.queue, envelope_texts(worker.name, encoded_args, ids), at, headers)
        return ids


@functools.lru_cache(maxsize=256)
def _send_sql(queue, batch, delayed, with_headers=False):
    """One round trip that inserts the message(s) and notifies waiting children.

    The rows are what ``pgmq.send``/``send_batch`` insert (``vt`` from the clock, or the
    delay's instant), written straight into the queue table, which the consumer reads too: the
    function's dynamic SQL costs more than the insert itself. Parameters: the epoch seconds
    ``at`` when ``delayed``, then the body (for ``batch``, one JSON array of the bodies: a
    driver that quotes on the client, as psycopg 3's ClientCursor does, quotes one string much
    faster than a list of them), then the headers every message gets when ``with_headers``.
    """
    vt = "to_timestamp(%s)" if delayed else "clock_timestamp()"
    headers = ", %s::jsonb" if with_headers else ""
    rows = (f"SELECT {vt}, jsonb_array_elements(%s::jsonb){headers}" if batch
            else f"VALUES ({vt}, %s::jsonb{headers})")
    columns = "vt, message, headers" if with_headers else "vt, message"
    table = queue_table("q", queue)
    return f"INSERT INTO {table} ({columns}) {rows}; NOTIFY {CHANNEL}, '{queue}'"


def send(conn, queue, bodies, at, headers=None):
    """Send inside the caller's transaction; create the queue first if it is missing."""
    if is_framework_wrapper(conn):
        # Django's connection: send on the driver connection inside it, which holds Django's
        # transaction; a driver error comes out as Django's (django.db.IntegrityError...),
        # as from any query, and marks the connection for Django's end-of-request check.
        with conn.wrap_database_errors:
            return send(django_connection(conn), queue, bodies, at, headers)
    batch = len(bodies) > 1
    sql = _send_sql(queue, batch, at is not None, headers is not None)
    body = "[" + ",".join(bodies) + "]" if batch else bodies[0]
    params = ((() if at is None else (float(at),)) + (body,)
              + (() if headers is None else (headers,)))
    driver = driver_of(conn)
    try:
        _execute_guarded(driver, conn, sql, params)
    except driver.undefined_table:
        _execute_guarded(driver, conn, "SELECT pgmq.create(%s); " + sql, (queue,) + params)


def _execute_guarded(driver, conn, sql, params):
    """Run ``sql`` so that its failure leaves the caller's transaction usable.

    A savepoint around the statement does that in one round trip; in autocommit mode each
    statement is its own transaction anyway.
    """
    guarded = not conn.autocommit
    if guarded:
        sql = f"SAVEPOINT jobrunner_enqueue; {sql}; RELEASE SAVEPOINT jobrunner_enqueue"
    try:
        with driver.cursor(conn) as cur:
            cur.execute(sql, params)
    except driver.error as exc:
        if guarded and not conn.closed:
            with driver.cursor(conn) as cur:
                cur.execute("ROLLBACK TO SAVEPOINT jobrunner_enqueue")
        if isinstance(exc, driver.missing_pgmq):
            raise BackendUnavailable(MISSING_PGMQ) from None
        raise

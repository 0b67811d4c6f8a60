"""Connections to Postgres for jobrunner's own processes, and the names they share.

Every connection a child, a housekeeper, a metrics reader or an admin command opens is made
here, so that they carry the same application name, time-outs and jsonb decoding.
"""

import json

import psycopg2
import psycopg2.extras

from jobrunner.errors import BackendUnavailable

CHANNEL = "jobrunner_pgmq"
#: Seconds added to the longest worker timeout on a queue to make the read lease: the child's
#: alarm fires at the timeout, the supervisor kills at timeout + grace, the lease outlives both.
LEASE_MARGIN = 30
#: Lease for queues whose workers have no timeout; the housekeeper renews it while they run.
UNBOUNDED_LEASE = 600
MISSING_PGMQ = ("pgmq is not installed in this database: run `jobrunner pgmq install` "
                 "(or start the supervisor with --pgmq-install)")



#: What a message body decodes to when it is nested too deeply for Python's json.
TOO_DEEP = object()


def _loads_jsonb(text):
    """json.loads for the consumer's jsonb columns; a body too deep to decode becomes
    ``TOO_DEEP`` (a problem job, kept as dead) instead of crashing the child at every fetch."""
    try:
        return json.loads(text)
    except RecursionError:
        return TOO_DEEP


def decode_deep_json_safely(conn):
    """Decode ``conn``'s jsonb values as a consumer does: too deep to decode is ``TOO_DEEP``.

    Readers of stored messages (the inspector) need it as much as consumers: one such row
    must not make every listing fail."""
    psycopg2.extras.register_default_jsonb(conn, loads=_loads_jsonb)


def connect(dsn, purpose="jobrunner", timeout=None, statement_timeout=None, autocommit=True,
            tolerate_deep_json=True):
    """A connection to ``dsn`` (libpq defaults when empty) for one of jobrunner's processes.

    ``purpose`` becomes the application name that ``pg_stat_activity`` shows; ``timeout``
    bounds the connect and ``statement_timeout`` every statement, in seconds. Children and
    housekeepers run autocommit: jobs never run inside a transaction of ours. A server that
    cannot be reached raises ``BackendUnavailable`` with libpq's reason.
    ``tolerate_deep_json``: decode a jsonb too deep for Python as ``TOO_DEEP`` (what a consumer
    needs to bury such a message) rather than raise.
    """
    options = {}
    if timeout is not None:
        options["connect_timeout"] = max(1, int(timeout))
    if statement_timeout is not None:
        options["options"] = f"-c statement_timeout={int(statement_timeout * 1000)}"
    try:
        conn = psycopg2.connect(dsn or "", application_name=purpose, **options)
    except psycopg2.OperationalError as exc:
        raise BackendUnavailable(f"Postgres is unreachable: {str(exc).strip()}") from None
    conn.autocommit = autocommit
    if tolerate_deep_json:
        decode_deep_json_safely(conn)
    return conn

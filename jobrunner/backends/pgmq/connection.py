"""Connections to Postgres for jobrunner's own processes, and the names they share.

Every connection a child, a housekeeper, a metrics reader or an admin command opens is made
here, so that they carry the same application name, time-outs and jsonb decoding.
"""

import json
import os
import re

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from jobrunner.errors import ConfigError, ServerUnreachable
from jobrunner.redact import redact
from jobrunner.backends import timeouts

CHANNEL = "jobrunner_pgmq"
#: Seconds added to the longest worker timeout on a queue to make the read lease: the child's
#: alarm fires at the timeout, the supervisor kills at timeout + grace, the lease outlives both.
LEASE_MARGIN = 30
#: Lease for queues whose workers have no timeout; the housekeeper renews it while they run.
UNBOUNDED_LEASE = 600
MISSING_PGMQ = ("pgmq is not installed in this database: run `jobrunner pgmq install` "
                 "(or start the supervisor with --pgmq-install)")
#: What libpq says of a host that answered but is not the writable server asked for.
STANDBY_REASONS = ("session is read-only", "server is in hot standby mode")
#: Seconds between two tries, at most, while a standby answers in place of the primary.
STANDBY_RETRY_SECONDS = 1.0

#: How every DDL of jobrunner's own tables (schema ``jobrunner``) opens: one advisory lock
#: serialises them all, since concurrent CREATE ... IF NOT EXISTS can still collide.
SCHEMA_DDL = """
SELECT pg_advisory_xact_lock(hashtext('jobrunner.periodic'));
CREATE SCHEMA IF NOT EXISTS jobrunner;
"""

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
    cannot be reached raises ``ServerUnreachable`` (a ``BackendUnavailable``) with libpq's reason.
    ``tolerate_deep_json``: decode a jsonb too deep for Python as ``TOO_DEEP`` (what a consumer
    needs to bury such a message) rather than raise.

    Unless the DSN sets them, the connection gets TCP keepalive, a TCP user timeout and a
    connect timeout (``backends/timeouts.py``), so a server that stops answering breaks it
    within ``timeouts.HUNG_SERVER_BOUND`` seconds; libpq applies the connect timeout to each
    host of a multi-host DSN in turn. A DSN naming several hosts gets
    ``target_session_attrs=read-write`` unless it (or ``PGTARGETSESSIONATTRS``) says
    otherwise: every process of ours writes, so a standby must never be taken for the primary.
    Messages show the DSN with its password masked; an invalid DSN raises ``ConfigError``.
    """
    try:
        given = psycopg2.extensions.parse_dsn(dsn or "")
    except psycopg2.ProgrammingError as exc:
        raise ConfigError(f"the Postgres DSN {redact(dsn)!r} is not valid: "
                          f"{_masked_reason(exc, dsn)}") from None
    # psycopg2 lets keywords override the DSN; only what the DSN leaves out is filled in.
    options = {key: value for key, value in _libpq_defaults().items() if key not in given}
    if os.environ.get("PGCONNECT_TIMEOUT"):
        options.pop("connect_timeout", None)
    if (_several_hosts(given) and "target_session_attrs" not in given
            and not os.environ.get("PGTARGETSESSIONATTRS")):
        options["target_session_attrs"] = "read-write"
    if timeout is not None:
        options["connect_timeout"] = max(1, int(timeout))
    if statement_timeout is not None:
        # Appended to the DSN's own options (a search_path, say), which a keyword would replace.
        options["options"] = " ".join(filter(None, (
            given.get("options"), f"-c statement_timeout={int(statement_timeout * 1000)}")))
    try:
        conn = _connect(dsn, purpose, options, given)
    except psycopg2.OperationalError as exc:
        raise ServerUnreachable(_unreachable(dsn, exc), retry_in=_standby_retry(exc)) from None
    conn.autocommit = autocommit
    if tolerate_deep_json:
        decode_deep_json_safely(conn)
    return conn


def _connect(dsn, purpose, options, given):
    """psycopg2.connect; without the statement timeout when a pooler refuses it at start-up.

    PgBouncer refuses the ``options`` startup parameter (``unsupported startup parameter``).
    A statement timeout cannot be carried through a transaction pooler for the session, so
    such a connection goes without it: only the metrics reader asks for one, and the
    supervisor gives up on a reader that does not answer within 4 s anyway."""
    try:
        return psycopg2.connect(dsn or "", application_name=purpose, **options)
    except psycopg2.OperationalError as exc:
        ours = "options" in options and "options" not in given
        if not (ours and "unsupported startup parameter" in str(exc)):
            raise
    options = {key: value for key, value in options.items() if key != "options"}
    return psycopg2.connect(dsn or "", application_name=purpose, **options)


def behind_pooler(conn) -> bool:
    """Whether ``conn`` reaches Postgres through a connection pooler such as PgBouncer.

    A pooler hands the client a backend key of its own (used to route cancel requests), so
    the pid the client was told differs from the pid of the server process that runs its
    statements; on a direct connection, and through a plain TCP proxy, the two are the same."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        served_by = cursor.fetchone()[0]
    if not conn.autocommit:
        conn.rollback()
    return served_by != conn.info.backend_pid


def listens(mode: str, conn) -> bool:
    """Whether a consumer on ``conn`` waits for NOTIFY: ``pg_listen`` "on", "off", or "auto"
    (unless ``conn`` goes through a pooler)."""
    return mode == "on" or (mode == "auto" and not behind_pooler(conn))


def _standby_retry(exc):
    """``STANDBY_RETRY_SECONDS`` when a host turned the connection away as a standby (libpq's
    reason for a target_session_attrs miss): mid-failover, the promotion may come any moment,
    and a child backing off to its longest wait would notice it that much later."""
    reason = str(exc)
    return STANDBY_RETRY_SECONDS if any(text in reason for text in STANDBY_REASONS) else None


def _unreachable(dsn, exc):
    """Why ``dsn`` could not be connected to, as libpq says it. libpq names SSL in a TLS
    failure; the operator also needs to see that TLS, not the network, failed, and with which
    server (its password masked)."""
    reason = str(exc).strip()
    if "SSL" in reason:
        return (f"Postgres is unreachable: TLS (SSL) failed with "
                f"{redact(dsn) or 'the server libpq defaults to'}: {reason}")
    return f"Postgres is unreachable: {reason}"


def _several_hosts(given):
    """Whether libpq would try more than one server for the parsed DSN ``given``: its
    ``host`` or ``hostaddr`` (else ``PGHOST``/``PGHOSTADDR``) is a comma-separated list."""
    return any("," in (given.get(key) or os.environ.get(variable) or "")
               for key, variable in (("host", "PGHOST"), ("hostaddr", "PGHOSTADDR")))


def _libpq_defaults():
    """libpq keywords every connection of ours gets unless its DSN sets them (read at each
    connect, so a test may lower the values in ``timeouts``)."""
    defaults = {"keepalives": 1, "keepalives_idle": timeouts.KEEPALIVE_IDLE,
                "keepalives_interval": timeouts.KEEPALIVE_INTERVAL,
                "keepalives_count": timeouts.KEEPALIVE_COUNT,
                "connect_timeout": timeouts.CONNECT_TIMEOUT}
    if psycopg2.extensions.libpq_version() >= 120000:     # libpq 12 added tcp_user_timeout
        defaults["tcp_user_timeout"] = timeouts.USER_TIMEOUT * 1000
    return defaults


def _masked_reason(exc, dsn):
    """libpq's complaint about ``dsn``; the parts of the DSN it quotes are hidden when the DSN
    holds a secret, since the quoted part may be a piece of the password."""
    reason = str(exc).strip()
    if redact(dsn) == dsn:
        return reason
    return re.sub(r'"[^"]*"', lambda m: m.group() if m.group() == '"="' else '"***"', reason)


def transaction(conn, work):
    """Run ``work(cursor)`` as one transaction and commit; returns its value. An autocommit
    connection (a housekeeper's, an inspector's) is one again afterwards."""
    autocommit = conn.autocommit
    if autocommit:
        conn.autocommit = False
    try:
        with conn.cursor() as cur:
            result = work(cur)
        conn.commit()
        return result
    except BaseException:
        if not conn.closed:
            conn.rollback()
        raise
    finally:
        if autocommit and not conn.closed:
            conn.autocommit = True

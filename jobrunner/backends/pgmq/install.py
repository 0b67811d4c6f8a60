"""Installs pgmq (CREATE EXTENSION where the server has it, else pgmq's own install SQL) and
jobrunner's tables for operators (``pgmq/processes.py``, ``pgmq/history.py``)."""

import importlib.util
import logging
import os

from jobrunner.backends.pgmq.history import DDL as HISTORY_TABLE
from jobrunner.backends.pgmq.processes import DDL as OPERATOR_TABLES
from jobrunner.errors import BackendUnavailable

log = logging.getLogger("jobrunner.pgmq")

# Serialises concurrent installs (two supervisors starting at once); any constant works.
_INSTALL_LOCK = 0x6A6F6272  # "jobr"


def installed_version(conn):
    """The installed pgmq version: the extension's, "sql" for a plain SQL install, or None."""
    with conn.cursor() as cur:
        cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'pgmq'")
        row = cur.fetchone()
        if row:
            return row[0]
        cur.execute("SELECT to_regclass('pgmq.meta') IS NOT NULL "
                    "AND to_regprocedure('pgmq.send(text,jsonb)') IS NOT NULL")
        return "sql" if cur.fetchone()[0] else None


def bundled_sql_path():
    """Path of ``pgmq.sql`` shipped in the ``pgmq`` PyPI package, found without importing it.

    The package's client needs psycopg 3; we only want its data file.
    """
    spec = importlib.util.find_spec("pgmq")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailable("pgmq's install SQL comes from the `pgmq` package on PyPI: "
                                 "pip install pgmq")
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, "sql", "pgmq.sql")
        if os.path.exists(path):
            return path
    raise BackendUnavailable("the installed `pgmq` package has no sql/pgmq.sql")


def install(conn):
    """Make sure pgmq is installed on ``conn``'s database, and jobrunner's tables for
    operators (supervisors, paused queues, the per-minute history); returns what was found or done about pgmq.

    Leaves an existing install alone. Commits on ``conn`` (it is an admin step, never run inside
    an application transaction).
    """
    conn.rollback()
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_INSTALL_LOCK,))
        done = _install_pgmq(conn, cur)
        cur.execute(OPERATOR_TABLES)
        cur.execute(HISTORY_TABLE)
    conn.commit()
    return done


def _install_pgmq(conn, cur):
    """Install pgmq unless it is there, inside the caller's transaction; says what it did."""
    version = installed_version(conn)
    if version is not None:
        return f"pgmq already installed ({version})"
    cur.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'pgmq'")
    if cur.fetchone():
        cur.execute("CREATE EXTENSION IF NOT EXISTS pgmq")
        log.info("installed pgmq with CREATE EXTENSION")
        return "pgmq installed (CREATE EXTENSION)"
    path = bundled_sql_path()
    with open(path, encoding="utf-8") as sql:
        cur.execute(sql.read())
    log.info("installed pgmq from %s", path)
    return f"pgmq installed from {path}"

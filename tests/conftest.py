"""Test fixtures: real Postgres (with pgmq's real SQL) and real Redis, private to this run.

The run starts its own Redis on a free port and creates its own Postgres database (see
``servers.py``), and removes both at the end; ``JOBRUNNER_TEST_REDIS_URL`` and
``JOBRUNNER_TEST_PG_DSN`` name servers to use instead.
"""

import os
import sys
import uuid

import psycopg2
import pytest
import redis

sys.path.insert(0, os.path.dirname(__file__))

from servers import (LOCAL_PG_MAINTENANCE, PrivateDatabase, SessionRedis,  # noqa: E402
                     pg_answers, sweep_abandoned_databases)
from contract_support import contract  # noqa: E402,F401 (the backend contract fixture)


@pytest.fixture(scope="session")
def pg_server_dsn(tmp_path_factory):
    """A DSN of a Postgres server's maintenance database on which this run may create its own.

    The local server when it answers, else an embedded one (pgserver) for the run.
    """
    if pg_answers(LOCAL_PG_MAINTENANCE):
        sweep_abandoned_databases(LOCAL_PG_MAINTENANCE)
        yield LOCAL_PG_MAINTENANCE
        return
    import pgserver
    server = pgserver.get_server(str(tmp_path_factory.mktemp("pg")), cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture(scope="session")
def pg_dsn(request):
    """A DSN for a Postgres database with pgmq installed, this run's own unless overridden."""
    from jobrunner.backends.pgmq.install import install
    dsn = os.environ.get("JOBRUNNER_TEST_PG_DSN")
    database = None
    if not dsn:
        database = PrivateDatabase(request.getfixturevalue("pg_server_dsn")).create()
        dsn = database.dsn
    conn = psycopg2.connect(dsn)
    install(conn)
    conn.close()
    yield dsn
    if database is not None:
        database.drop()


@pytest.fixture
def scratch_database(pg_server_dsn):
    """Creates extra empty databases for one test (``scratch_database()`` -> DSN); dropped after."""
    made = []

    def make():
        made.append(PrivateDatabase(pg_server_dsn, suffix="_scratch").create())
        return made[-1].dsn
    yield make
    for database in made:
        database.drop()


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory):
    """The URL of this run's Redis server, without a database number."""
    url = os.environ.get("JOBRUNNER_TEST_REDIS_URL")
    if url:
        yield url
        return
    server = SessionRedis(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


def _with_db(url, db):
    """``url`` on database ``db`` unless it names one itself."""
    path = url.split("://", 1)[-1].split("?", 1)[0]
    return url if "/" in path and path.rsplit("/", 1)[1] else f"{url.rstrip('/')}/{db}"


@pytest.fixture
def redis_url(redis_server_url):
    """A Redis URL on a database that is empty when the test starts and is emptied after it."""
    url = _with_db(redis_server_url, int(os.environ.get("JOBRUNNER_TEST_REDIS_DB", "0")))
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def redis_conn(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def pg_conn(pg_dsn):
    """A psycopg2 connection in the default (transactional) mode; rolled back and closed after."""
    conn = psycopg2.connect(pg_dsn)
    yield conn
    conn.rollback()
    conn.close()


@pytest.fixture
def queue_name(pg_dsn, request):
    """A fresh pgmq queue name, dropped after the test."""
    name = "t_" + uuid.uuid4().hex[:12]
    yield name
    if "pg_conn" in request.fixturenames:
        request.getfixturevalue("pg_conn").rollback()   # it may hold a lock on the queue
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT pgmq.drop_queue(%s)", (name,))
    conn.close()

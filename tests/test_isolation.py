"""The suite's own servers: it runs on a Redis and a database of its own, and cleans up after
runs that were killed before they could."""

import os
import time
from urllib.parse import urlsplit

import psycopg2
import pytest

from servers import DATABASE_PREFIX, PrivateDatabase, sweep_abandoned_databases


def database_names(dsn):
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database")
        names = {row[0] for row in cur.fetchall()}
    conn.close()
    return names


@pytest.mark.skipif(bool(os.environ.get("JOBRUNNER_TEST_REDIS_URL")),
                    reason="the Redis to test against is given")
def test_the_run_has_a_redis_server_of_its_own(redis_url):
    assert urlsplit(redis_url).port != 6379


@pytest.mark.skipif(bool(os.environ.get("JOBRUNNER_TEST_PG_DSN")),
                    reason="the database to test against is given")
def test_the_run_has_a_database_of_its_own(pg_dsn):
    conn = psycopg2.connect(pg_dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT current_database()")
        [name] = cur.fetchone()
    conn.close()
    assert name.startswith(DATABASE_PREFIX)


def test_a_database_left_by_a_killed_run_is_dropped_and_one_in_use_is_kept(pg_server_dsn):
    # Both as if made by runs that started an hour ago.
    abandoned, in_use = (PrivateDatabase(pg_server_dsn, suffix=s, started=time.time() - 3600)
                         for s in ("_gone", "_live"))
    abandoned.create()
    in_use.create()
    abandoned._keeper.close()          # the killed run's connections are gone; the live one's not
    abandoned._keeper = None
    try:
        dropped = sweep_abandoned_databases(pg_server_dsn)
        assert abandoned.name in dropped and in_use.name not in dropped
        names = database_names(pg_server_dsn)
        assert abandoned.name not in names and in_use.name in names
    finally:
        abandoned.drop()
        in_use.drop()

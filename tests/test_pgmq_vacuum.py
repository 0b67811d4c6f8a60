"""The housekeeper's VACUUM of drained queue tables (``pgmq/vacuum.py``), on a real Postgres."""

import logging
import os
import threading
import time
import uuid

import psycopg2
import pytest

import jobrunner
from jobrunner.backends.pgmq import vacuum
from jobrunner.backends.pgmq.backend import PgmqBackend
from jobrunner.config import Settings
from jobrunner.process.history import minute_of
from jobrunner.process.state import SupervisorState
from helpers import free_port, wait_for

# Fewer than autovacuum's threshold (50 dead rows plus 20% of the table), so only ours runs.
JOBS = 30


@pytest.fixture
def small_thresholds(monkeypatch):
    monkeypatch.setattr(vacuum, "CHECK_RUNS", 10)
    monkeypatch.setattr(vacuum, "VACUUM_DEAD_ROWS", 20)


def table_stats(dsn, queue):
    """(n_dead_tup, vacuum_count) of the queue's table: manual VACUUMs only."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT n_dead_tup, vacuum_count FROM pg_stat_user_tables "
                        "WHERE relid = %s::regclass", (f'pgmq."q_{queue}"',))
            return cur.fetchone()
    finally:
        conn.close()


def drained_queue(dsn, queue):
    """``queue`` with JOBS messages sent and deleted, once the statistics count them dead."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT pgmq.create(%s)", (queue,))
        cur.execute("SELECT pgmq.send(%s, '{}'::jsonb) FROM generate_series(1, %s)",
                    (queue, JOBS))
        cur.execute(f'DELETE FROM pgmq."q_{queue}"')
    conn.close()
    wait_for(lambda: table_stats(dsn, queue)[0] >= JOBS, message="the dead rows counted")


def state(queue, runs):
    return SupervisorState(identity="vacuum-test", hostname="pgtest", pid=os.getpid(),
                           started_at=time.time(), queues=[queue], concurrency=1,
                           settled={minute_of(time.time()): (runs, 0)} if runs else {})


def test_the_housekeeper_vacuums_a_queue_table_once_its_supervisor_ran_enough_jobs(
        pg_dsn, queue_name, small_thresholds):
    backend = PgmqBackend(Settings(pg_dsn=pg_dsn), jobrunner.Registry())
    keeper = backend.housekeeper(f"pgtest:1:{uuid.uuid4().hex[:12]}")
    try:
        keeper.tick(state(queue_name, 0))          # its first look: the table is not there yet
        drained_queue(pg_dsn, queue_name)
        keeper.tick(state(queue_name, 5))          # 5 runs: fewer than CHECK_RUNS, no look
        keeper.tick(state(queue_name, 9))
        assert not keeper.vacuum.busy() and table_stats(pg_dsn, queue_name)[1] == 0
        keeper.tick(state(queue_name, 12))         # 12 runs since the last look
        wait_for(lambda: table_stats(pg_dsn, queue_name) == (0, 1), message="one VACUUM")
    finally:
        keeper.close()


def test_the_housekeeper_vacuums_after_the_runs_stop(pg_dsn, queue_name, small_thresholds):
    backend = PgmqBackend(Settings(pg_dsn=pg_dsn), jobrunner.Registry())
    keeper = backend.housekeeper(f"pgtest:1:{uuid.uuid4().hex[:12]}")
    try:
        keeper.tick(state(queue_name, 0))
        drained_queue(pg_dsn, queue_name)
        keeper.tick(state(queue_name, 3))
        assert table_stats(pg_dsn, queue_name)[1] == 0
        keeper.tick(state(queue_name, 3))          # no run since: the drain is over
        wait_for(lambda: table_stats(pg_dsn, queue_name) == (0, 1), message="one VACUUM")
    finally:
        keeper.close()


def test_a_table_below_the_threshold_is_not_vacuumed(pg_dsn, queue_name, monkeypatch):
    monkeypatch.setattr(vacuum, "VACUUM_DEAD_ROWS", JOBS + 1)
    backend = PgmqBackend(Settings(pg_dsn=pg_dsn), jobrunner.Registry())
    keeper = backend.housekeeper(f"pgtest:1:{uuid.uuid4().hex[:12]}")
    try:
        drained_queue(pg_dsn, queue_name)
        keeper.tick(state(queue_name, 0))          # the first tick looks
        assert keeper.vacuum._thread is None
        assert table_stats(pg_dsn, queue_name) == (JOBS, 0)
    finally:
        keeper.close()


def test_a_table_the_role_does_not_own_is_left_to_autovacuum(pg_dsn, queue_name,
                                                              small_thresholds):
    role = "jr_vacuum_" + uuid.uuid4().hex[:8]
    admin = psycopg2.connect(pg_dsn)
    admin.autocommit = True
    cur = admin.cursor()
    cur.execute(f"CREATE ROLE {role} LOGIN")
    try:
        cur.execute(f"GRANT USAGE ON SCHEMA pgmq TO {role}")
        drained_queue(pg_dsn, queue_name)
        params = psycopg2.extensions.parse_dsn(pg_dsn)
        dsn = psycopg2.extensions.make_dsn(**dict(params, user=role, password=None))
        refused = vacuum.QueueVacuum(dsn, cur)
        refused.tick(state(queue_name, 0))
        wait_for(lambda: not refused.busy(), message="the VACUUM's end")
        assert refused.refused == {queue_name}
        assert table_stats(pg_dsn, queue_name)[1] == 0
        first = refused._thread
        refused.tick(state(queue_name, 50))        # never tried again
        assert refused._thread is first and not refused.busy()
        refused.close()
    finally:
        cur.execute(f"REVOKE USAGE ON SCHEMA pgmq FROM {role}")
        cur.execute(f"DROP ROLE {role}")
        admin.close()


def test_a_vacuum_that_cannot_connect_is_logged_and_tried_at_the_next_look(
        pg_dsn, queue_name, small_thresholds, caplog, monkeypatch):
    escaped = []
    monkeypatch.setattr(threading, "excepthook", escaped.append)
    admin = psycopg2.connect(pg_dsn)
    admin.autocommit = True
    try:
        drained_queue(pg_dsn, queue_name)
        params = psycopg2.extensions.parse_dsn(pg_dsn)
        unreachable = psycopg2.extensions.make_dsn(**dict(params, host="127.0.0.1",
                                                          port=str(free_port())))
        keeper = vacuum.QueueVacuum(unreachable, admin.cursor())
        with caplog.at_level(logging.WARNING, logger="jobrunner.pgmq"):
            keeper.tick(state(queue_name, 0))      # dead rows found; the VACUUM cannot connect
            first = keeper._thread
            wait_for(lambda: not keeper.busy(), message="the failed VACUUM's end")
        assert escaped == []
        assert any("could not vacuum the tables of " + queue_name in r.getMessage()
                   for r in caplog.records)
        assert keeper.refused == set()
        keeper.tick(state(queue_name, 12))         # the next due look tries again
        assert keeper._thread is not first
        wait_for(lambda: not keeper.busy(), message="the second attempt's end")
        keeper.close()
        assert table_stats(pg_dsn, queue_name)[1] == 0
    finally:
        admin.close()

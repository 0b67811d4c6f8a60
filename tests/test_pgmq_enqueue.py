"""Enqueue on pgmq, on the caller's own connection from either driver: psycopg2 and psycopg 3.

Each test runs on both drivers (``conn`` is a connection of the test's driver, in the default
transactional mode), except where a test needs one driver's own hooks.
"""

import datetime
import time

import psycopg
import psycopg.errors
import psycopg2
import psycopg2.errors
import pytest

from test_pgmq import consumer_for, make_worker, rows
from jobrunner.errors import BackendUnavailable


def connect(driver, dsn):
    return psycopg2.connect(dsn) if driver == "psycopg2" else psycopg.connect(dsn)


def errors_of(conn):
    return psycopg.errors if isinstance(conn, psycopg.Connection) else psycopg2.errors


@pytest.fixture(params=["psycopg2", "psycopg"])
def driver(request):
    return request.param


@pytest.fixture
def conn(driver, pg_dsn, queue_name):
    made = connect(driver, pg_dsn)
    yield made
    made.rollback()
    made.close()


def test_enqueue_writes_roadsters_envelope(pg_dsn, conn, queue_name):
    worker = make_worker(queue_name)
    job_id = worker.enqueue(conn, {"k": [1, 2]})
    conn.commit()
    [(_, read_ct, _, message, _)] = rows(pg_dsn, queue_name)
    assert message == {"metadata": {"id": job_id, "worker_name": "PgWorker"}, "args": {"k": [1, 2]}}
    assert read_ct == 0


def test_enqueue_runs_in_the_callers_transaction_and_never_commits(pg_dsn, conn, queue_name):
    worker = make_worker(queue_name)
    worker.enqueue(conn, 1)       # creates the queue inside this transaction
    conn.commit()
    worker.enqueue(conn, 2)
    assert len(rows(pg_dsn, queue_name)) == 1, "another session must not see an uncommitted job"
    conn.rollback()
    assert [r[3]["args"] for r in rows(pg_dsn, queue_name)] == [1]
    worker.enqueue(conn, 3)
    conn.commit()
    assert [r[3]["args"] for r in rows(pg_dsn, queue_name)] == [1, 3]


def test_missing_queue_is_created_without_breaking_the_callers_work(pg_dsn, conn, queue_name):
    with conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE before_enqueue (x int)")
        cur.execute("INSERT INTO before_enqueue VALUES (42)")
    make_worker(queue_name).enqueue(conn, "first")
    with conn.cursor() as cur:
        cur.execute("SELECT x FROM before_enqueue")
        assert cur.fetchone() == (42,)
    conn.commit()
    assert [r[3]["args"] for r in rows(pg_dsn, queue_name)] == ["first"]


def test_a_failed_enqueue_raises_and_leaves_the_transaction_usable(pg_dsn, conn, queue_name):
    worker = make_worker(queue_name)
    other = psycopg2.connect(pg_dsn)
    with other, other.cursor() as cur:
        # A server-side refusal of the second job only.
        cur.execute("SELECT pgmq.create(%s)", (queue_name,))
        cur.execute(f'ALTER TABLE pgmq."q_{queue_name}" ADD CONSTRAINT no_twos '
                    "CHECK (message->'args' <> '2')")
    other.close()
    worker.enqueue(conn, 1)
    with pytest.raises(errors_of(conn).CheckViolation):
        worker.enqueue(conn, 2)
    with conn.cursor() as cur:
        cur.execute("SELECT 2")
        assert cur.fetchone() == (2,)
    conn.commit()
    assert [r[3]["args"] for r in rows(pg_dsn, queue_name)] == [1]


def test_enqueue_on_an_autocommit_connection(pg_dsn, queue_name, driver):
    conn = connect(driver, pg_dsn)
    conn.autocommit = True
    try:
        make_worker(queue_name).enqueue(conn, "auto")
    finally:
        conn.close()
    assert [r[3]["args"] for r in rows(pg_dsn, queue_name)] == ["auto"]


def test_delayed_jobs_are_hidden_until_their_time(pg_dsn, conn, queue_name):
    worker = make_worker(queue_name)
    before = time.time()
    worker.enqueue_in(conn, 30, "in")
    worker.enqueue_in(conn, datetime.timedelta(minutes=2), "delta")
    at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    worker.enqueue_at(conn, at, "at")
    conn.commit()
    vts = {r[3]["args"]: r[2].timestamp() for r in rows(pg_dsn, queue_name)}
    assert before + 29 < vts["in"] < time.time() + 31
    assert before + 119 < vts["delta"] < time.time() + 121
    assert abs(vts["at"] - at.timestamp()) < 0.01
    consumer = consumer_for(pg_dsn, worker)
    assert consumer.fetch(0.05) == []
    consumer.close()


def test_batch_is_one_statement_and_keeps_order(pg_dsn, pg_conn, queue_name):
    worker = make_worker(queue_name)
    worker.enqueue(pg_conn, 0)
    pg_conn.commit()
    queries = []

    class CountingCursor(psycopg2.extensions.cursor):
        def execute(self, sql, params=None):
            queries.append(sql)
            return super().execute(sql, params)

    pg_conn.cursor_factory = CountingCursor
    ids = worker.enqueue_batch(pg_conn, [{"n": i} for i in range(100)])
    pg_conn.cursor_factory = None
    pg_conn.commit()
    assert len(queries) == 1
    stored = rows(pg_dsn, queue_name)[1:]
    assert [r[3]["args"]["n"] for r in stored] == list(range(100))
    assert [r[3]["metadata"]["id"] for r in stored] == ids


def test_a_batch_creates_its_missing_queue_and_a_delayed_batch_stays_hidden(pg_dsn, conn,
                                                                           queue_name):
    worker = make_worker(queue_name)
    worker.enqueue_batch(conn, ["now-1", "now-2"])
    at = time.time() + 90
    worker._enqueuer().push(worker, conn, ['"later-1"', '"later-2"'], at=at)
    conn.commit()
    stored = rows(pg_dsn, queue_name)
    assert [r[3]["args"] for r in stored] == ["now-1", "now-2", "later-1", "later-2"]
    assert all(r[1] == 0 and r[4] is None for r in stored)    # read_ct 0, no headers
    assert all(abs(r[2].timestamp() - at) < 0.01 for r in stored[2:])
    consumer = consumer_for(pg_dsn, worker)
    assert [job.args for job in consumer.fetch(0.05, limit=10)] == ["now-1", "now-2"]
    consumer.close()


def test_enqueue_without_pgmq_says_how_to_install_it(scratch_database, queue_name, driver):
    conn = connect(driver, scratch_database())
    try:
        with pytest.raises(BackendUnavailable, match="jobrunner pgmq install"):
            make_worker(queue_name).enqueue(conn, 1)
        with conn.cursor() as cur:    # the caller's transaction still works
            cur.execute("SELECT 1")
    finally:
        conn.close()

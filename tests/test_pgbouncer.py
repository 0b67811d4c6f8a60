"""pgmq through a real PgBouncer in transaction pooling, in front of the run's database.

Each transaction may run on a different server connection, and a server connection serves many
clients in turn. Checked: enqueues from several clients at once (psycopg2 and psycopg 3) keep
their transactions, a supervisor's children drain through the pooler with nothing lost, and
they notice that NOTIFY cannot reach them and poll every ``fetch_timeout`` instead. The drain
script (``scripts/pgbouncer_drain.py``) runs in its short form.
"""

import os
import re
import subprocess
import sys
import threading
import time

import psycopg2
import pytest

import jobrunner
from jobrunner.backends.pgmq.backend import PgmqBackend
from jobrunner.backends.pgmq.connection import behind_pooler, connect
from jobrunner.config import Settings
from bouncer_support import PgBouncer, unavailable_reason
from helpers import PrivatePostgres, wait_for
from supervisor_support import supervise  # noqa: F401  (a fixture)

CLIENTS, JOBS_PER_CLIENT = 4, 40
#: Unset: the default ("auto"). JOBRUNNER_PG_LISTEN=on shows what the test catches.
PG_LISTEN_UNDER_TEST = {}


@pytest.fixture(scope="module")
def bouncer(pg_dsn):
    reason = unavailable_reason()
    if reason:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(reason)
    # One server connection: every client's transactions take turns on it.
    pooler = PgBouncer(pg_dsn, pool_size=1).start()
    yield pooler
    pooler.stop()


def record_worker(queue):
    return type("Record", (jobrunner.Worker,), {"enqueuer": jobrunner.PgEnqueuer,
                                                "queue": queue,
                                                "handle": lambda self, args: None})


def queued_numbers(pg_dsn, queue):
    conn = psycopg2.connect(pg_dsn)
    with conn.cursor() as cur:
        cur.execute(f"SELECT message->'args'->>'n' FROM pgmq.q_{queue}")
        numbers = sorted(int(row[0]) for row in cur.fetchall())
    conn.close()
    return numbers


def connect_driver(driver, dsn):
    if driver == "psycopg2":
        return psycopg2.connect(dsn)
    import psycopg
    # prepare_threshold=None: psycopg 3 otherwise prepares statements it runs often, and a
    # prepared statement lives on one server connection, which the pooler shares.
    return psycopg.connect(dsn, prepare_threshold=None)


def test_a_pooled_connection_is_told_apart_from_a_direct_one(bouncer, pg_dsn):
    direct, pooled = connect(pg_dsn), connect(bouncer.dsn)
    assert not behind_pooler(direct) and behind_pooler(pooled)
    direct.close()
    pooled.close()


def test_a_statement_timeout_the_pooler_refuses_at_start_up_is_left_out(bouncer, pg_dsn,
                                                                        queue_name):
    # The metrics reader asks for a statement timeout; PgBouncer refuses it as a startup
    # parameter, so it goes without, and still reads.
    conn = connect(bouncer.dsn, statement_timeout=3)
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    conn.close()
    inspector = PgmqBackend(Settings(pg_dsn=bouncer.dsn), jobrunner.Registry()).inspector(
        bounded=True)
    record_worker(queue_name).enqueue(inspector.conn, {"n": 1})
    assert queued_numbers(pg_dsn, queue_name) == [1]
    inspector.conn.close()


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg3"])
def test_enqueues_from_many_clients_keep_their_transactions(bouncer, pg_dsn, queue_name,
                                                            driver):
    worker = record_worker(queue_name)
    setup = psycopg2.connect(pg_dsn)
    setup.autocommit = True
    setup.cursor().execute("SELECT pgmq.create(%s)", (queue_name,))
    setup.close()
    failures = []

    def client(k):
        try:
            conn = connect_driver(driver, bouncer.dsn)
            base = k * 1000
            for n in range(JOBS_PER_CLIENT // 2):
                worker.enqueue(conn, {"n": base + n})
                conn.commit()
            worker.enqueue_batch(conn, [{"n": base + n}
                                        for n in range(JOBS_PER_CLIENT // 2, JOBS_PER_CLIENT)])
            conn.commit()
            worker.enqueue(conn, {"n": base + 999})      # rolled back: never queued
            conn.rollback()
            conn.close()
        except Exception as exc:                          # reported below, with its client
            failures.append((k, repr(exc)))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures
    assert queued_numbers(pg_dsn, queue_name) == sorted(
        k * 1000 + n for k in range(CLIENTS) for n in range(JOBS_PER_CLIENT))


@pytest.mark.slow
def test_children_through_the_pooler_drain_everything_and_poll(bouncer, pg_dsn, queue_name,
                                                                supervise):
    worker = record_worker(queue_name)
    env = {"JOBRUNNER_PG_DSN": bouncer.dsn, "TEST_QUEUE": queue_name,
           "JOBRUNNER_LOG_LEVEL": "INFO", **PG_LISTEN_UNDER_TEST}
    sv = supervise("pg_app", "--processes", "2", env=env)
    sv.wait_log("idle children poll for jobs every 1s")
    sv.wait_workers(2, timeout=20)
    conn = psycopg2.connect(bouncer.dsn)
    worker.enqueue_batch(conn, [{"n": n} for n in range(200)])
    conn.commit()
    sv.wait_lines("ran", 200, timeout=60)

    # Idle now: a new job is found by the next poll, within fetch_timeout (1 s), not by NOTIFY.
    waits = []
    for n in range(1000, 1005):
        enqueued = time.time()
        worker.enqueue(conn, {"n": n})
        conn.commit()
        started = wait_for(lambda: [float(r[2]) for r in sv.lines("ran") if r[1] == str(n)],
                           5, 0.01, message=f"job {n} to run")[0]
        waits.append(started - enqueued)
    # A LISTEN through the pooler would stay on the one server connection, and the NOTIFYs of
    # our own enqueues would come back to whichever client used it next: this one.
    stray = list(conn.notifies)
    conn.close()
    sv.signal(15)
    assert sv.wait_exit() == 0
    print(f"\nidle start through the pooler: {', '.join(f'{w:.2f}' for w in waits)} s")
    assert sv.ran() == {n: 1 for n in [*range(200), *range(1000, 1005)]}, "lost or twice"
    assert max(waits) <= 1.0 + 0.5, waits
    assert not stray, f"notifications meant for a child reached an app's connection: {stray}"


@pytest.mark.slow
def test_the_drain_script_prints_both_paths_in_its_short_form():
    if not PrivatePostgres.available():
        (pytest.fail if os.environ.get("CI") else pytest.skip)("a private Postgres needs root")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, os.path.join(root, "scripts", "pgbouncer_drain.py"),
                           "--jobs", "300", "--rounds", "1", "--pool-sizes", "1"],
                          capture_output=True, text=True, timeout=120, cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = re.findall(r"^(direct|PgBouncer pool 1), round 1: first read after ([\d.]+) s, "
                         r"then 300 jobs in [\d.]+ s = [\d,]+ jobs/s$", done.stdout, re.MULTILINE)
    assert [path for path, _ in figures] == ["direct", "PgBouncer pool 1"], done.stdout
    # Through the pooler the idle children find the jobs at their next poll (fetch_timeout).
    assert float(figures[1][1]) <= 1.5, done.stdout

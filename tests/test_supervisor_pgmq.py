"""The real `jobrunner run` on pgmq, driven with real signals: delivery, stops, faults, limits.

Each test starts `python -m jobrunner run apps.pg_app:registry` (or another app) in its own
process group, on its own pgmq queue, and synchronises on what the jobs write to their output
file, on the supervisor's log, on process titles and on the queue tables.
"""

import signal
import time

import psycopg2
import psycopg2.extras
import pytest

import jobrunner
from helpers import alive, wait_for
from jobrunner.process.pool import MAX_BOOT_FAILURES
from supervisor_support import (assert_one_recycle_at_a_time, elapsed, senders, signal_pid,
                                supervise)  # noqa: F401  (supervise is a fixture)

pytestmark = pytest.mark.slow


@pytest.fixture
def env(pg_dsn, queue_name):
    return {"JOBRUNNER_PG_DSN": pg_dsn, "TEST_QUEUE": queue_name, "JOBRUNNER_LOG_LEVEL": "INFO"}


@pytest.fixture
def jobs(queue_name):
    return senders(jobrunner.PgEnqueuer, queue_name)


@pytest.fixture
def db(pg_dsn):
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    yield conn
    conn.close()


def enqueue(pg_dsn, worker, *args_list, delay=None):
    conn = psycopg2.connect(pg_dsn)
    try:
        ids = [worker.enqueue_in(conn, delay, args) if delay else worker.enqueue(conn, args)
               for args in args_list]
        conn.commit()
        return ids
    finally:
        conn.close()


def messages(db, queue, table="q"):
    """Rows of pgmq's queue (``q``) or archive (``a``) table, with ``visible`` computed."""
    with db.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        extra = ", vt <= clock_timestamp() AS visible" if table == "q" else ""
        cur.execute(f'SELECT msg_id, read_ct, message, headers{extra} '
                    f'FROM pgmq."{table}_{queue}" ORDER BY msg_id')
        return cur.fetchall()


def error_of(row):
    return (row["headers"] or {}).get("jobrunner_error")


# -- delivery -----------------------------------------------------------------------------

def test_delivery_exactly_once_rollback_delay_and_dead(supervise, env, jobs, pg_dsn, db,
                                                       queue_name):
    conn = psycopg2.connect(pg_dsn)
    jobs["Record"].enqueue_batch(conn, [{"n": n} for n in range(30)])
    for n in range(30, 40):
        jobs["Record"].enqueue(conn, {"n": n})
    jobs["AlwaysFails"].enqueue(conn, {"n": 700})
    conn.commit()
    for n in range(1000, 1005):             # rolled back: these jobs never existed
        jobs["Record"].enqueue(conn, {"n": n})
    conn.rollback()
    delayed_at = time.time()
    jobs["Record"].enqueue_in(conn, 2, {"n": 500})
    conn.commit()
    conn.close()

    sv = supervise("pg_app", "--processes", "2", env=env)
    sv.wait_lines("ran", 41)
    wait_for(lambda: len(messages(db, queue_name, "a")) == 1, message="the failing job archived")
    wait_for(lambda: not messages(db, queue_name), message="an empty queue")
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0

    assert sv.ran() == {n: 1 for n in [*range(40), 500]}      # none missing, none twice
    (delayed,) = [float(r[2]) for r in sv.lines("ran") if r[1] == "500"]
    assert delayed >= delayed_at + 2, "the delayed job ran before its delay"
    assert sv.ran("fail") == {700: 2}                           # first run + one retry
    (dead,) = messages(db, queue_name, "a")
    assert dead["message"]["metadata"]["worker_name"] == "AlwaysFails"
    assert dead["read_ct"] == 2
    error = error_of(dead)
    assert (error["error_class"], error["error_message"], error["attempts"]) == \
        ("ValueError", "boom 700", 2)
    # the middleware saw every run of the failing job, in order, in whichever child
    hooks = [r for r in sv.middleware_lines() if r[1] == "AlwaysFails"]
    assert [r[0] for r in hooks] == ["before", "error", "after"] * 2
    assert [r[3] for r in hooks if r[0] == "before"] == ["1", "2"]
    assert [r[3] for r in hooks if r[0] == "after"] == ["retry", "dead"]
    assert sum(1 for r in sv.middleware_lines() if r[0] == "after" and r[3] == "done") == 41


# -- stopping -----------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_graceful_stop_lets_the_running_job_finish(supervise, env, jobs, pg_dsn, db, queue_name,
                                                   sig):
    enqueue(pg_dsn, jobs["Slow"], {"n": 1, "seconds": 1.0})
    sv = supervise("pg_app", "--processes", "2", "--shutdown-timeout", "10", env=env)
    sv.wait_lines("start", 1)
    sv.signal(sig)
    assert sv.wait_exit(10) == 0
    assert sv.lines("end") == [["end", "1"]]
    assert messages(db, queue_name) == [] and messages(db, queue_name, "a") == []
    assert f"{sig.name}: stopping" in sv.log()


def test_hard_stop_requeues_the_running_job_unchanged(supervise, env, jobs, pg_dsn, db,
                                                      queue_name):
    enqueue(pg_dsn, jobs["Slow"], {"n": 1, "seconds": 30})
    (before,) = messages(db, queue_name)
    sv = supervise("pg_app", "--processes", "1", "--shutdown-timeout", "1", env=env)
    sv.wait_lines("start", 1)
    started = time.monotonic()
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit(10) == 0
    assert 1.0 <= elapsed(started) < 5.0
    assert sv.lines("end") == []
    (after,) = messages(db, queue_name)
    assert after["msg_id"] == before["msg_id"] and after["message"] == before["message"]
    assert after["visible"], "the requeued job must be visible again at once"
    assert after["read_ct"] == 0, "the interrupted run must not count as an attempt"
    assert error_of(after) is None
    hooks = [r[0] + ":" + r[3] for r in sv.middleware_lines()]
    assert hooks == ["before:1", "after:requeued"]


def test_a_second_term_stops_at_once_and_still_requeues(supervise, env, jobs, pg_dsn, db,
                                                       queue_name):
    enqueue(pg_dsn, jobs["Slow"], {"n": 1, "seconds": 30})
    sv = supervise("pg_app", "--processes", "1", "--shutdown-timeout", "60", env=env)
    sv.wait_lines("start", 1)
    sv.signal(signal.SIGTERM)
    sv.wait_log("SIGTERM: stopping")
    started = time.monotonic()
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit(10) == 0
    assert elapsed(started) < 4.0
    (row,) = messages(db, queue_name)
    assert row["visible"] and row["read_ct"] == 0


# -- quiet and resizing -------------------------------------------------------------------

def test_quiet_starts_no_job_and_ttin_ttou_resize_the_pool(supervise, env, jobs, pg_dsn, db,
                                                           queue_name):
    sv = supervise("pg_app", "--processes", "2", env=env)
    first = sv.wait_workers(2, titled="idle")
    sv.signal(signal.SIGTSTP)
    sv.wait_workers(2, titled="quiet")
    enqueue(pg_dsn, jobs["Record"], {"n": 1})
    # Observation window, not synchronisation: nothing may start while quiet.
    time.sleep(1.5)
    assert sv.lines() == [] and messages(db, queue_name)[0]["read_ct"] == 0
    assert sv.cli.proc.poll() is None

    sv.signal(signal.SIGTTIN)
    grown = sv.wait_workers(3, titled="quiet")      # the new child is quiet from the start
    assert set(first) < set(grown)
    sv.signal(signal.SIGTTOU)
    sv.wait_workers(2)
    sv.signal(signal.SIGTTOU)
    sv.wait_workers(1)
    sv.signal(signal.SIGTTOU)                        # never below one child
    sv.wait_log("pool sizes now pgmq=1\n", timeout=5)
    # one per backend, shared; waited for: a title being set reads empty for a moment
    wait_for(lambda: len(sv.housekeepers()) == 1, 10, message="exactly one housekeeper")
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0
    assert sv.lines() == [] and messages(db, queue_name)[0]["read_ct"] == 0
    assert "exited unexpectedly" not in sv.log()


# -- faults -------------------------------------------------------------------------------

def test_kill_9_of_a_busy_child_replaces_it_and_retries_the_job(supervise, env, jobs, pg_dsn,
                                                                db, queue_name):
    sv = supervise("pg_app", "--processes", "2", env=env)
    sv.wait_workers(2)
    enqueue(pg_dsn, jobs["DiesOnce"], {"n": 1})
    ((_, _, pid),) = sv.wait_lines("start", 1)
    signal_pid(int(pid), signal.SIGKILL)
    sv.wait_lines("ran", 1)                           # it ran again, in another child
    replaced = sv.wait_workers(2)
    assert int(pid) not in replaced
    wait_for(lambda: messages(db, queue_name, "a"), message="the job archived after success")
    (row,) = messages(db, queue_name, "a")
    assert row["read_ct"] == 2, "the killed run counts as an attempt"
    error = error_of(row)
    assert error["error_class"] == "jobrunner.ChildDied" and error["attempts"] == 1
    assert [r[3] for r in sv.middleware_lines() if r[0] == "before"] == ["1", "2"]
    assert f"child {pid} exited unexpectedly (killed by SIGKILL) running job" in sv.log()
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0


def test_kill_9_of_the_supervisor_leaves_no_child_and_the_job_recoverable(
        supervise, env, jobs, pg_dsn, db, queue_name):
    enqueue(pg_dsn, jobs["Slow"], {"n": 1, "seconds": 30})
    sv = supervise("pg_app", "--processes", "2", env=env)
    sv.wait_lines("start", 1)
    children = list(sv.children())
    assert len(children) == 3                          # two workers and the housekeeper
    sv.signal(signal.SIGKILL)
    assert sv.wait_exit() == -signal.SIGKILL
    wait_for(lambda: not any(alive(pid) for pid in children), timeout=5,
             message="every child to die with the supervisor")
    (row,) = messages(db, queue_name)
    assert row["visible"] and row["read_ct"] == 0, "the held job is back, unchanged"

    again = supervise("pg_app", "--processes", "1", "--shutdown-timeout", "0", env=env)
    again.wait_lines("start", 1)                       # a new supervisor picks it up
    again.signal(signal.SIGTERM)
    assert again.wait_exit() == 0


def test_job_timeouts_alarm_then_supervisor_kill(supervise, env, jobs, pg_dsn, db, queue_name):
    enqueue(pg_dsn, jobs["TooSlow"], {"n": 1})
    enqueue(pg_dsn, jobs["IgnoresAlarm"], {"n": 2})
    sv = supervise("pg_app", "--processes", "2", env=env)
    starts = {r[1]: int(r[2]) for r in sv.wait_lines("start", 2)}
    started = time.monotonic()
    wait_for(lambda: len(messages(db, queue_name, "a")) == 2, timeout=12,
             message="both jobs archived")
    errors = {row["message"]["metadata"]["worker_name"]: error_of(row)
              for row in messages(db, queue_name, "a")}
    # the alarm interrupted the job in its child...
    assert errors["TooSlow"]["error_class"] == "JobTimeout"
    assert errors["TooSlow"]["attempts"] == 1
    # ...and a job blocking the alarm was killed by the supervisor after timeout + grace (5 s)
    assert errors["IgnoresAlarm"]["error_class"] == "JobTimeout"
    assert "killed by the supervisor" in errors["IgnoresAlarm"]["error_message"]
    assert errors["IgnoresAlarm"]["attempts"] == 1
    assert elapsed(started) >= 4.0
    assert f"killing pgmq child {starts['2']}: timeout" in sv.log()
    assert not alive(starts["2"]) and alive(starts["1"])
    sv.wait_workers(2)
    assert sv.lines("end") == []
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0


# -- failing to start ---------------------------------------------------------------------

def test_children_crashing_at_start_stop_the_supervisor_with_code_5(supervise, env):
    sv = supervise("broken_app", "--processes", "2", env=dict(env, TEST_BACKEND="pgmq"))
    assert sv.wait_exit(20) == 5
    log = sv.log()
    assert log.count("Traceback (most recent call last)") == 1
    # the error: in the first failure's line, its traceback (source line and last line), and
    # the CLI's last line; the later failures only say "same error"
    assert log.count("broken on purpose") == 4
    assert log.count("failed at start") == MAX_BOOT_FAILURES - 1      # then it gives up
    last = log.strip().splitlines()[-1]
    assert last.startswith("jobrunner: pgmq children keep failing at start (5 in a row), "
                           "giving up: AttributeError: 'NoneType' object has no attribute")


def test_unreachable_database_exits_4(supervise, env):
    sv = supervise("pg_app", "--pg-dsn", "postgresql://root@127.0.0.1:1/test", env=env)
    assert sv.wait_exit(15) == 4
    assert "Postgres is unreachable" in sv.log()


def test_import_error_exits_3_and_says_so_once(supervise, env):
    sv = supervise("import_error_app", env=env)
    assert sv.wait_exit(15) == 3
    log = sv.log()
    assert log.count("broken on purpose") == 1
    assert "cannot import 'apps.import_error_app'" in log


# -- recycling ----------------------------------------------------------------------------

def test_max_jobs_recycles_one_child_at_a_time_and_loses_nothing(supervise, env, jobs, pg_dsn,
                                                                 db, queue_name):
    conn = psycopg2.connect(pg_dsn)
    jobs["Slow"].enqueue_batch(conn, [{"n": n, "seconds": 0.02} for n in range(40)])
    conn.commit()
    conn.close()
    sv = supervise("pg_app", "--processes", "2", "--max-jobs", "3", env=env)
    sv.wait_lines("end", 40)
    wait_for(lambda: not messages(db, queue_name), message="an empty queue")
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0
    assert sv.ran("start") == sv.ran("end") == {n: 1 for n in range(40)}
    assert len({r[2] for r in sv.lines("start")}) >= 5     # several generations of children
    assert_one_recycle_at_a_time(sv.log(), "pgmq")

"""The real `jobrunner run` on each backend, driven with real signals: delivery, stops, faults."""

import contextlib
import functools
import json
import re
import signal
import time
import uuid

import psycopg2
import psycopg2.extras
import pytest
import redis

import jobrunner
import supervisor_support
from helpers import CliProcess, alive, wait_for
from jobrunner.process.pool import MAX_BOOT_FAILURES
from supervisor_support import (assert_one_recycle_at_a_time, elapsed, pgmq_dead,  # noqa: F401
                                senders, sidekiq_dead, signal_pid,
                                supervise)  # (supervise is a fixture)

pytestmark = pytest.mark.slow


# Each test starts `python -m jobrunner run apps.pg_app:registry` or `apps.redis_app:registry`
# (or another app) in its own process group, on its own queue, and synchronises on the jobs'
# output file, the supervisor's log, process titles and the backend's own storage. A fact both
# backends keep in their own form is checked by the backend's ``assert_*`` method; a fact only
# one backend has is checked under ``if backend.name == ...``.

class Side:
    """One backend under a test: the env for `jobrunner run`, senders, reads of its storage."""

    def __init__(self, queue, server_env):
        self.queue = queue
        self.env = dict(server_env, TEST_QUEUE=queue, JOBRUNNER_LOG_LEVEL="INFO")
        self.jobs = senders(self.enqueuer, queue)

    def enqueue(self, worker, *args_list, delay=None):
        with self.enqueuing() as conn:
            return [worker.enqueue_in(conn, delay, args) if delay else worker.enqueue(conn, args)
                    for args in args_list]


class PgmqSide(Side):
    name, app = "pgmq", "pg_app"
    enqueuer = jobrunner.PgEnqueuer
    # port 1: nothing listens there
    unreachable = (["--pg-dsn", "postgresql://root@127.0.0.1:1/test"], "Postgres is unreachable")

    def __init__(self, dsn, queue):
        super().__init__(queue, {"JOBRUNNER_PG_DSN": dsn})
        self.dsn = dsn
        self.db = psycopg2.connect(dsn)
        self.db.autocommit = True

    @contextlib.contextmanager
    def enqueuing(self):
        """A connection to enqueue on; the jobs exist once the block commits."""
        conn = psycopg2.connect(self.dsn)
        try:
            yield conn
            conn.commit()
        finally:
            conn.close()

    def enqueue_rolled_back(self, worker, args_list):
        """Enqueue in a transaction that is rolled back: these jobs never existed."""
        conn = psycopg2.connect(self.dsn)
        try:
            for args in args_list:
                worker.enqueue(conn, args)
            conn.rollback()
        finally:
            conn.close()

    def messages(self, table="q"):
        """Rows of pgmq's queue (``q``) or archive (``a``) table, with ``visible`` computed."""
        with self.db.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            extra = ", vt <= clock_timestamp() AS visible" if table == "q" else ""
            cur.execute(f'SELECT msg_id, read_ct, message, headers{extra} '
                        f'FROM pgmq."{table}_{self.queue}" ORDER BY msg_id')
            return cur.fetchall()

    def waiting(self):
        return self.messages()

    def dead_jobs(self):
        """The archive: dead jobs (and the successes of DiesOnce, which archives them)."""
        return [pgmq_dead(row) for row in self.messages("a")]

    def settled(self):
        """Nothing waiting, delayed, retrying or leased: all of those are rows of ``q``."""
        return not self.messages()

    def assert_untouched(self, before):
        """The queue holds the job of ``before`` as it was: visible, never counted as read."""
        (job,), (after,) = before, self.messages()
        assert after["msg_id"] == job["msg_id"] and after["message"] == job["message"]
        assert after["visible"], "the requeued job must be visible again at once"
        assert after["read_ct"] == 0, "the interrupted run must not count as an attempt"
        assert error_of(after) is None

    def close(self):
        self.db.close()


class SidekiqSide(Side):
    # redis_app runs the housekeeper's heartbeat and poller every ~0.5 s instead of ~5 s, so
    # delayed jobs, retries and remote signals are seen within a second.
    name, app = "sidekiq", "redis_app"
    enqueuer = jobrunner.SidekiqEnqueuer
    # port 1: nothing listens there
    unreachable = (["--redis-url", "redis://127.0.0.1:1/0"],
                   "Redis at redis://127.0.0.1:1/0 is not usable")

    def __init__(self, url, queue):
        super().__init__(queue, {"JOBRUNNER_REDIS_URL": url})
        self.r = redis.Redis.from_url(url, decode_responses=True)

    @contextlib.contextmanager
    def enqueuing(self):
        yield self.r                    # each enqueue is written at once

    def waiting(self):
        return self.r.lrange(f"queue:{self.queue}", 0, -1)

    def in_flight(self):
        return [key for key in self.r.scan_iter("jobrunner:inflight:*") if self.r.llen(key)]

    def dead_jobs(self):
        return [sidekiq_dead(json.loads(raw)) for raw in self.r.zrange("dead", 0, -1)]

    def settled(self):
        return (self.r.llen(f"queue:{self.queue}") == 0 and not self.in_flight()
                and self.r.zcard("schedule") == 0 and self.r.zcard("retry") == 0)

    def assert_untouched(self, before):
        """The queue holds the one job of ``before``, byte for byte, and nothing else has it."""
        assert len(before) == 1 and self.waiting() == before
        assert not self.in_flight() and self.r.zcard("retry") == 0
        assert self.r.get("stat:failed") in (None, "0")

    def counted(self):
        """Sidekiq's stat:processed and stat:failed counters (pgmq keeps none)."""
        return {key: int(self.r.get(f"stat:{key}")) for key in ("processed", "failed")}

    def identity(self):
        """The supervisor's entry in Sidekiq's ``processes`` set, once it has beaten."""
        return wait_for(lambda: next(iter(self.r.smembers("processes")), None),
                        message="the supervisor in `processes`")

    def close(self):
        self.r.close()


def error_of(row):
    return (row["headers"] or {}).get("jobrunner_error")


@pytest.fixture(params=["pgmq", "sidekiq"])
def backend(request):
    if request.param == "pgmq":
        side = PgmqSide(request.getfixturevalue("pg_dsn"), request.getfixturevalue("queue_name"))
    else:
        side = SidekiqSide(request.getfixturevalue("redis_url"), "q_" + uuid.uuid4().hex[:10])
    yield side
    side.close()


sidekiq_only = pytest.mark.parametrize("backend", ["sidekiq"], indirect=True)


# -- delivery -----------------------------------------------------------------------------

def test_delivery_exactly_once_delay_and_dead(supervise, backend):
    jobs = backend.jobs
    with backend.enqueuing() as conn:
        jobs["Record"].enqueue_batch(conn, [{"n": n} for n in range(30)])
        for n in range(30, 40):
            jobs["Record"].enqueue(conn, {"n": n})
        jobs["AlwaysFails"].enqueue(conn, {"n": 700})
    if backend.name == "pgmq":      # a pgmq enqueue is part of the caller's transaction
        backend.enqueue_rolled_back(jobs["Record"], [{"n": n} for n in range(1000, 1005)])
    delayed_at = time.time()
    backend.enqueue(jobs["Record"], {"n": 500}, delay=2)

    sv = supervise(backend.app, "--processes", "2", env=backend.env)
    sv.wait_lines("ran", 41)
    wait_for(lambda: len(backend.dead_jobs()) == 1, message="the failing job dead")
    wait_for(backend.settled, message="nothing left to run")
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0

    assert sv.ran() == {n: 1 for n in [*range(40), 500]}      # none missing, none twice
    (delayed,) = [float(r[2]) for r in sv.lines("ran") if r[1] == "500"]
    assert delayed >= delayed_at + 2, "the delayed job ran before its delay"
    assert sv.ran("fail") == {700: 2}                           # first run + one retry
    (dead,) = backend.dead_jobs()
    assert dead.worker == "AlwaysFails"
    assert (dead.error_class, dead.error_message, dead.attempts) == ("ValueError", "boom 700", 2)
    if backend.name == "pgmq":
        assert dead.raw["read_ct"] == 2
    else:                           # the fields of a Sidekiq dead-set entry
        assert dead.raw["args"] == [{"n": 700}] and dead.raw["queue"] == backend.queue
        assert {"failed_at", "retried_at"} <= set(dead.raw)
        assert backend.counted() == {"processed": 43, "failed": 2}
    # the middleware saw every run of the failing job, in order, in whichever child. The two
    # runs are in different children and may overlap in the file (a retry with no backoff can
    # start before the first child has written its "after"), so each run is read by attempt.
    hooks = [r for r in sv.middleware_lines() if r[1] == "AlwaysFails"]
    assert len(hooks) == 6
    for attempt in ("1", "2"):
        run = [r[0] for r in hooks if (r[3] if r[0] == "before" else r[4]) == attempt]
        assert run == ["before", "error", "after"], (attempt, hooks)
    assert [r[3] for r in hooks if r[0] == "before"] == ["1", "2"]
    assert {r[4]: r[3] for r in hooks if r[0] == "after"} == {"1": "retry", "2": "dead"}
    assert sum(1 for r in sv.middleware_lines() if r[0] == "after" and r[3] == "done") == 41


def test_a_job_fetched_behind_a_long_one_starts_in_another_child_meanwhile(supervise, backend):
    # Short jobs first, so that each child's prefetch grows and the two slow jobs at the end
    # of the queue are fetched together; the second must not wait for the first to end.
    jobs = backend.jobs
    with backend.enqueuing() as conn:
        jobs["Record"].enqueue_batch(conn, [{"n": n} for n in range(300)])
        jobs["Slow"].enqueue_batch(conn, [{"n": 900, "seconds": 4}, {"n": 901, "seconds": 4}])
    sv = supervise(backend.app, "--processes", "2", env=backend.env)
    started = sv.wait_lines("start", 2)
    assert not sv.lines("end"), "the second slow job waited for the first to end"
    assert {row[1] for row in started} == {"900", "901"}
    assert len({row[2] for row in started}) == 2, "both ran in one child"
    sv.wait_lines("end", 2)
    assert sv.ran() == {n: 1 for n in range(300)}
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0


def test_history_counts_every_settled_run_in_its_minute(supervise, backend):
    from jobrunner.backends import make_backend
    from jobrunner.config import Settings
    settings = (Settings(pg_dsn=backend.dsn) if backend.name == "pgmq"
                else Settings(redis_url=backend.env["JOBRUNNER_REDIS_URL"]))
    inspector = make_backend(backend.name, settings).inspector()

    def runs(before):
        """Runs counted in the last 2 minutes beyond ``before``, per minute (pgmq's table is
        shared by the session's tests, so other supervisors may have counted there too)."""
        old = {e["minute"]: (e["processed"], e["failed"]) for e in before}
        entries = inspector.history(2)
        return (sum(e["processed"] - old.get(e["minute"], (0, 0))[0] for e in entries),
                sum(e["failed"] - old.get(e["minute"], (0, 0))[1] for e in entries))

    try:
        before = inspector.history(3)
        with backend.enqueuing() as conn:
            backend.jobs["Record"].enqueue_batch(conn, [{"n": n} for n in range(20)])
            for n in (700, 701, 702):       # each fails once, is retried, then dies
                backend.jobs["AlwaysFails"].enqueue(conn, {"n": n})
        sv = supervise(backend.app, "--processes", "2", env=backend.env)
        wait_for(lambda: runs(before) == (26, 6), timeout=20,
                 message=f"26 runs, 6 failed, in the history; it shows {runs(before)}")
        sv.signal(signal.SIGTERM)
        assert sv.wait_exit() == 0
        assert runs(before) == (26, 6)      # nothing counted again at the stop
        assert len(backend.dead_jobs()) == 3 and sv.ran() == {n: 1 for n in range(20)}
        if backend.name == "sidekiq":       # the same count as Sidekiq's own counters
            assert backend.counted() == {"processed": 26, "failed": 6}
        # Runs just before a clean stop are written by the housekeeper's last act, not lost
        # with the tick it did not get to.
        before = inspector.history(3)
        sv = supervise(backend.app, "--processes", "1", env=backend.env)
        with backend.enqueuing() as conn:
            backend.jobs["Record"].enqueue_batch(conn, [{"n": n} for n in range(100, 110)])
        sv.wait_lines("ran", 10)
        sv.signal(signal.SIGTERM)
        assert sv.wait_exit() == 0
        assert runs(before) == (10, 0)
    finally:
        inspector.close()


def test_every_failed_attempt_is_logged_with_its_error_and_traceback(supervise, backend):
    with backend.enqueuing() as conn:
        backend.jobs["AlwaysFails"].enqueue(conn, {"n": 701})
    sv = supervise(backend.app, "--processes", "1", env=backend.env)
    wait_for(lambda: len(backend.dead_jobs()) == 1, message="the failing job dead")
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0
    log = sv.log()
    retry = [line for line in log.splitlines() if " job retry worker=AlwaysFails" in line]
    dead = [line for line in log.splitlines() if " job dead worker=AlwaysFails" in line]
    assert len(retry) == 1 and " WARNING " in retry[0] and "attempt=1" in retry[0]
    assert len(dead) == 1 and " ERROR " in dead[0] and "attempt=2" in dead[0]
    for line in retry + dead:
        assert line.endswith("error=ValueError: boom 701"), line
        # the traceback follows, down to the line of the job that raised
        after = log[log.index(line) + len(line):].splitlines()[1:8]
        assert after[0] == "Traceback (most recent call last):", after
        assert any("supervised.py" in frame and "in handle" in frame for frame in after), after
        # it starts at the job's own code, not at the runner's frame that called it
        assert "supervised.py" in after[1] and "jobrunner/process" not in after[1], after


# -- stopping -----------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_graceful_stop_lets_the_running_job_finish(supervise, backend, sig):
    backend.enqueue(backend.jobs["Slow"], {"n": 1, "seconds": 1.0})
    sv = supervise(backend.app, "--processes", "2", "--shutdown-timeout", "10", env=backend.env)
    sv.wait_lines("start", 1)
    sv.signal(sig)
    assert sv.wait_exit(10) == 0
    assert sv.lines("end") == [["end", "1"]]
    assert backend.settled() and backend.dead_jobs() == []
    if backend.name == "sidekiq":
        assert backend.counted()["processed"] == 1
    assert f"{sig.name}: stopping" in sv.log()


def test_hard_stop_requeues_the_running_job_unchanged(supervise, backend):
    backend.enqueue(backend.jobs["Slow"], {"n": 1, "seconds": 30})
    before = backend.waiting()
    sv = supervise(backend.app, "--processes", "1", "--shutdown-timeout", "1", env=backend.env)
    sv.wait_lines("start", 1)
    started = time.monotonic()
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit(10) == 0
    assert 1.0 <= elapsed(started) < 5.0
    assert sv.lines("end") == []
    backend.assert_untouched(before)
    hooks = [r[0] + ":" + r[3] for r in sv.middleware_lines()]
    assert hooks == ["before:1", "after:requeued"]


def test_a_second_term_stops_at_once_and_still_requeues(supervise, backend):
    backend.enqueue(backend.jobs["Slow"], {"n": 1, "seconds": 30})
    before = backend.waiting()
    sv = supervise(backend.app, "--processes", "1", "--shutdown-timeout", "60", env=backend.env)
    sv.wait_lines("start", 1)
    sv.signal(signal.SIGTERM)
    sv.wait_log("SIGTERM: stopping")
    started = time.monotonic()
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit(10) == 0
    assert elapsed(started) < 4.0
    backend.assert_untouched(before)


# -- quiet and resizing -------------------------------------------------------------------

def test_quiet_starts_no_job_and_ttin_ttou_resize_the_pool(supervise, backend):
    sv = supervise(backend.app, "--processes", "2", env=backend.env)
    first = sv.wait_workers(2, titled="idle")
    sv.signal(signal.SIGTSTP)
    sv.wait_workers(2, titled="quiet")
    backend.enqueue(backend.jobs["Record"], {"n": 1})
    before = backend.waiting()
    # Observation window, not synchronisation: nothing may start while quiet.
    time.sleep(1.5)
    assert sv.lines() == []
    backend.assert_untouched(before)
    assert sv.cli.proc.poll() is None

    sv.signal(signal.SIGTTIN)
    grown = sv.wait_workers(3, titled="quiet")      # the new child is quiet from the start
    assert set(first) < set(grown)
    sv.signal(signal.SIGTTOU)
    sv.wait_workers(2)
    sv.signal(signal.SIGTTOU)
    sv.wait_workers(1)
    sv.signal(signal.SIGTTOU)                        # never below one child
    sv.wait_log(f"pool sizes now {backend.name}=1\n", timeout=5)
    # one per backend, shared; waited for: a title being set reads empty for a moment
    wait_for(lambda: len(sv.housekeepers()) == 1, 10, message="exactly one housekeeper")
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0
    assert sv.lines() == []
    backend.assert_untouched(before)
    assert "exited unexpectedly" not in sv.log()


# -- faults -------------------------------------------------------------------------------

def test_kill_9_of_a_busy_child_replaces_it_and_retries_the_job(supervise, backend):
    sv = supervise(backend.app, "--processes", "2", env=backend.env)
    sv.wait_workers(2)
    (jid,) = backend.enqueue(backend.jobs["DiesOnce"], {"n": 1})
    ((_, _, pid),) = sv.wait_lines("start", 1)
    signal_pid(int(pid), signal.SIGKILL)
    # The worker's backoff is 0: the crashed run counts as a failed attempt and the job runs
    # again at once, in another child (the middleware records the attempt of each run).
    sv.wait_lines("ran", 1)
    assert [r[3] for r in sv.middleware_lines() if r[0] == "before"] == ["1", "2"]
    # Sidekiq: the rerun's ack travels with its child's next fetch, so this takes a moment
    wait_for(backend.settled, message="the job settled after its rerun")
    replaced = sv.wait_workers(2)
    assert int(pid) not in replaced
    assert f"child {pid} exited unexpectedly (killed by SIGKILL) running job {jid}" in sv.log()
    if backend.name == "pgmq":      # DiesOnce archives its success, with the crash recorded
        (row,) = backend.messages("a")
        assert row["read_ct"] == 2, "the killed run counts as an attempt"
        error = error_of(row)
        assert error["error_class"] == "jobrunner.ChildDied" and error["attempts"] == 1
    else:
        assert backend.dead_jobs() == []
        assert f"job {jid} of a dead child: retry" in sv.log()
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0
    if backend.name == "sidekiq":
        assert backend.counted() == {"processed": 2, "failed": 1}


def test_kill_9_of_the_supervisor_leaves_no_child_and_the_job_back(supervise, backend):
    backend.enqueue(backend.jobs["Slow"], {"n": 1, "seconds": 30})
    before = backend.waiting()
    sv = supervise(backend.app, "--processes", "2", env=backend.env)
    sv.wait_lines("start", 1)
    if backend.name == "sidekiq":
        identity = backend.identity()
    children = list(sv.children())
    assert len(children) == 3                          # two workers and the housekeeper
    sv.signal(signal.SIGKILL)
    assert sv.wait_exit() == -signal.SIGKILL
    wait_for(lambda: not any(alive(pid) for pid in children), timeout=5,
             message="every child to die with the supervisor")
    backend.assert_untouched(before)
    if backend.name == "sidekiq":   # the housekeeper cleared the heartbeat on its way out:
        assert identity not in backend.r.smembers("processes")     # no ghost in the Web UI

    again = supervise(backend.app, "--processes", "1", "--shutdown-timeout", "0",
                      env=backend.env)
    again.wait_lines("start", 1)                       # a new supervisor picks it up
    again.signal(signal.SIGTERM)
    assert again.wait_exit() == 0


def test_job_timeouts_alarm_then_supervisor_kill(supervise, backend):
    backend.enqueue(backend.jobs["TooSlow"], {"n": 1})
    backend.enqueue(backend.jobs["IgnoresAlarm"], {"n": 2})
    # A grace of 2 s, not the default 5: the alarm (at the 1 s timeout) and the kill (at 3 s)
    # are still far enough apart to tell which ended each job.
    sv = supervise(backend.app, "--processes", "2", "--timeout-grace", "2", env=backend.env)
    starts = {r[1]: int(r[2]) for r in sv.wait_lines("start", 2)}
    started = time.monotonic()
    wait_for(lambda: len(backend.dead_jobs()) == 2, timeout=12, message="both jobs dead")
    dead = {job.worker: job for job in backend.dead_jobs()}
    # the alarm interrupted the job in its child...
    assert dead["TooSlow"].error_class == "JobTimeout"
    assert dead["TooSlow"].attempts == 1
    # ...and a job blocking the alarm was killed by the supervisor after timeout + grace
    assert dead["IgnoresAlarm"].error_class == "JobTimeout"
    assert "killed by the supervisor" in dead["IgnoresAlarm"].error_message
    assert dead["IgnoresAlarm"].attempts == 1
    assert elapsed(started) >= 2.0
    assert f"killing {backend.name} child {starts['2']}: timeout" in sv.log()
    assert not alive(starts["2"]) and alive(starts["1"])
    assert backend.settled()
    sv.wait_workers(2)
    assert sv.lines("end") == []
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0


# -- failing to start ---------------------------------------------------------------------

def test_children_crashing_at_start_stop_the_supervisor_with_code_5(supervise, backend):
    sv = supervise("broken_app", "--processes", "2",
                   env=dict(backend.env, TEST_BACKEND=backend.name))
    assert sv.wait_exit(20) == 5
    log = sv.log()
    assert log.count("Traceback (most recent call last)") == 1
    # the error: in the first failure's line, its traceback (source line and last line), and
    # the CLI's last line; the later failures only say "same error"
    assert log.count("broken on purpose") == 4
    assert log.count("failed at start") == MAX_BOOT_FAILURES - 1      # then it gives up
    last = log.strip().splitlines()[-1]
    assert last.startswith(f"jobrunner: {backend.name} children keep failing at start "
                           "(5 in a row), giving up: AttributeError: 'NoneType' object has "
                           "no attribute")


def test_an_unreachable_server_exits_4(supervise, backend):
    args, message = backend.unreachable
    sv = supervise(backend.app, *args, env=backend.env)
    assert sv.wait_exit(15) == 4
    assert message in sv.log()


def test_import_error_exits_3_and_says_so_once(supervise, backend):
    sv = supervise("import_error_app", env=backend.env)
    assert sv.wait_exit(15) == 3
    log = sv.log()
    assert log.count("Traceback (most recent call last)") == 1
    assert "cannot import 'apps.import_error_app'" in log


# -- recycling ----------------------------------------------------------------------------

def test_max_jobs_recycles_one_child_at_a_time_and_loses_nothing(supervise, backend):
    with backend.enqueuing() as conn:
        backend.jobs["Slow"].enqueue_batch(conn, [{"n": n, "seconds": 0.02} for n in range(40)])
    sv = supervise(backend.app, "--processes", "2", "--max-jobs", "3", env=backend.env)
    sv.wait_lines("end", 40)
    wait_for(backend.settled, message="an empty queue")
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0
    assert sv.ran("start") == sv.ran("end") == {n: 1 for n in range(40)}
    assert len({r[2] for r in sv.lines("start")}) >= 5     # several generations of children
    assert_one_recycle_at_a_time(sv.log(), backend.name)
    if backend.name == "sidekiq":
        assert backend.counted()["processed"] == 40


@pytest.mark.parametrize("limit, reason", [
    (["--max-jobs", "2"],
     r"max_jobs reached: ran (?P<ran>\d+) job\(s\) \(max_jobs 2, (?P<limit>[23]) for this child "
     r"with its jitter\)"),
    (["--max-rss-mb", "1"],
     r"RSS (?P<rss>\d+\.\d) MB is above the max_rss_mb limit of 1 MB \(after \d+ job\(s\)\)"),
], ids=["max_jobs", "max_rss_mb"])
def test_a_child_says_why_it_asks_to_be_recycled(supervise, backend, limit, reason):
    with backend.enqueuing() as conn:
        backend.jobs["Record"].enqueue_batch(conn, [{"n": n} for n in range(8)])
    sv = supervise(backend.app, "--processes", "1", *limit, env=backend.env)
    asking = re.compile(rf"^\S+Z {backend.name}\.\d+\[(?P<pid>\d+)\] INFO {backend.name}\.\d+: "
                        rf"asking to be recycled: (?P<reason>{reason})$", re.MULTILINE)
    found = wait_for(lambda: asking.search(sv.log()),
                     message=f"a child asking to be recycled; log:\n{sv.log()[-3000:]}")
    sv.wait_log(f"recycling {backend.name} child {found['pid']} ({found['reason']})")
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0
    if "ran" in reason:
        assert int(found["ran"]) >= int(found["limit"])
    else:
        assert float(found["rss"]) > 1


# -- logging: the app's own loggers ---------------------------------------------------------

#: An app whose job and middleware log through the app's own logger ``myapp.mail``. With
#: TEST_APP_LOGGING=own it configures logging itself at import (``TEST_APP_FORMAT``).
LOGGING_APP = '''
import logging
import os

import jobrunner

if os.environ["TEST_APP_LOGGING"] == "own":
    logging.basicConfig(level=logging.INFO, format=os.environ["TEST_APP_FORMAT"])

log = logging.getLogger("myapp.mail")


class LogsTwice(jobrunner.Worker):
    enqueuer = getattr(jobrunner, os.environ["TEST_ENQUEUER"])
    queue = os.environ["TEST_QUEUE"]

    def handle(self, args):
        log.info("sending mail %s", args["n"])
        log.warning("mail %s is slow", args["n"])


class LogsAround:
    def before(self, job):
        log.info("before %s", job.args["n"])

    def after(self, job, outcome):
        log.info("after %s: %s", job.args["n"], outcome.value)


registry = jobrunner.Registry()
registry.register(LogsTwice)
registry.add_middleware(LogsAround())
'''

#: The app's own format, in TEST_APP_LOGGING=own: it uses the job fields jobrunner adds.
APP_FORMAT = "APP %(levelname)s %(name)s job_id=%(job_id)s worker=%(worker)s queue=%(queue)s " \
             "attempt=%(attempt)s %(message)s"

#: The start of every line in jobrunner's text format.
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \S+\[\d+\] "
                       r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) ")

#: What the job and the middleware log for job ``n``: (level, message).
APP_LINES = (("INFO", "before {n}"), ("INFO", "sending mail {n}"),
             ("WARNING", "mail {n} is slow"), ("INFO", "after {n}: done"))


@pytest.fixture
def logging_app(supervise, tmp_path, monkeypatch):
    """``logging_app(backend, app_logging, *args)``: enqueue jobs 1 and 2 of ``LogsTwice``, run
    them under ``supervise`` on ``LOGGING_APP`` and stop; the supervisor and the two ids.

    The app is written to a folder of this test's (the shared tests/apps has no app that logs
    through its own loggers), which the supervisor's command runs in.
    """
    root = tmp_path / "app_root"
    (root / "apps").mkdir(parents=True)
    (root / "apps" / "__init__.py").write_text("")
    (root / "apps" / "logging_app.py").write_text(LOGGING_APP)
    monkeypatch.setattr(supervisor_support, "CliProcess",
                        functools.partial(CliProcess, app_dir=str(root)))

    def run(backend, app_logging, *args):
        sender = type("LogsTwice", (jobrunner.Worker,),
                      {"enqueuer": backend.enqueuer, "queue": backend.queue})
        ids = backend.enqueue(sender, {"n": 1}, {"n": 2})
        env = dict(backend.env, TEST_APP_LOGGING=app_logging, TEST_APP_FORMAT=APP_FORMAT,
                   TEST_ENQUEUER=backend.enqueuer.__name__)
        sv = supervise("logging_app", "--processes", "1", *args, env=env)
        for job_id in ids:
            sv.wait_log(f"job done worker=LogsTwice id={job_id} ")
        sv.signal(signal.SIGTERM)
        assert sv.wait_exit() == 0
        return sv, ids
    return run


def test_the_apps_lines_take_the_text_format_and_name_their_job(logging_app, backend):
    sv, ids = logging_app(backend, "none")
    lines = sv.log().splitlines()
    raw = [line for line in lines if not TEXT_LINE.match(line)]
    assert raw == [], "every line is in jobrunner's text format"
    for n, job_id in enumerate(ids, 1):
        tag = f" [worker=LogsTwice id={job_id} queue={backend.queue} attempt=1]"
        for level, message in APP_LINES:
            ending = f" {level} myapp.mail: {message.format(n=n)}{tag}"
            found = [line for line in lines if line.endswith(ending)]
            assert len(found) == 1, (ending, lines)
            assert f"Z {backend.name}.1[" in found[0], found[0]     # from the worker child
        # the outcome line says which job in its message, and only there
        (outcome,) = [line for line in lines if f" job done worker=LogsTwice id={job_id} " in line]
        assert "[worker=" not in outcome, outcome
    (registered,) = [line for line in lines if " INFO registered LogsTwice " in line]
    assert registered.endswith(f"backends {backend.name})"), registered


def test_the_apps_lines_take_the_json_format_with_the_job_field(logging_app, backend):
    sv, ids = logging_app(backend, "none", "--log-format", "json")
    entries = [json.loads(line) for line in sv.log().splitlines()]   # no raw line among them
    for n, job_id in enumerate(ids, 1):
        job = {"job_id": job_id, "worker": "LogsTwice", "queue": backend.queue, "attempt": 1}
        for level, message in APP_LINES:
            (entry,) = [e for e in entries if e["message"] == message.format(n=n)]
            assert (entry["logger"], entry["level"], entry["job"]) == ("myapp.mail", level, job)
            assert entry["process"] == f"{backend.name}.1"
        (outcome,) = [e for e in entries if e.get("outcome") and e["job"]["job_id"] == job_id]
        assert outcome["job"] == job and outcome["outcome"] == "done"
    assert all("job" not in e for e in entries if e["process"] == "supervisor")


def test_an_app_that_configured_logging_keeps_it_and_can_show_the_job(logging_app, backend):
    sv, ids = logging_app(backend, "own")
    lines = sv.log().splitlines()
    for n, job_id in enumerate(ids, 1):
        for level, message in APP_LINES:
            line = (f"APP {level} myapp.mail job_id={job_id} worker=LogsTwice "
                    f"queue={backend.queue} attempt=1 {message.format(n=n)}")
            assert lines.count(line) == 1, (line, lines)
        # jobrunner's own lines keep jobrunner's format, once
        (outcome,) = [line for line in lines if f" job done worker=LogsTwice id={job_id} " in line]
        assert TEXT_LINE.match(outcome), outcome
    assert not [line for line in lines if "myapp.mail:" in line], "an app line in jobrunner's"
    assert not [line for line in lines if line.startswith("APP") and "jobrunner" in line]


# -- Sidekiq only: the process hash that Sidekiq's Web UI reads and writes ------------------

class TestSidekiqOnly:
    """pgmq supervisors do not register themselves anywhere (yet); Sidekiq's do."""

    @sidekiq_only
    def test_quiet_and_resizing_show_in_the_process_hash(self, supervise, backend):
        r = backend.r
        sv = supervise(backend.app, "--processes", "2", env=backend.env)
        sv.wait_workers(2, titled="idle")
        identity = backend.identity()
        sv.signal(signal.SIGTSTP)
        sv.wait_workers(2, titled="quiet")
        wait_for(lambda: r.hget(identity, "quiet") == "true", message="quiet in the process hash")
        sv.signal(signal.SIGTTIN)
        sv.wait_workers(3, titled="quiet")
        wait_for(lambda: json.loads(r.hget(identity, "info"))["concurrency"] == 3,
                 message="the new concurrency in the process hash")
        sv.signal(signal.SIGTTOU)
        sv.wait_workers(2)
        sv.signal(signal.SIGTERM)
        assert sv.wait_exit() == 0
        assert identity not in r.smembers("processes")

    @sidekiq_only
    def test_a_remote_ttin_dumps_the_running_jobs_stack_and_adds_no_child(self, supervise,
                                                                           backend):
        r = backend.r
        sv = supervise(backend.app, "--processes", "1", "--shutdown-timeout", "0.5",
                       env=backend.env)
        (child,) = sv.wait_workers(1, titled="idle")
        identity = backend.identity()
        backend.enqueue(backend.jobs["Slow"], {"n": 1, "seconds": 30})
        sv.wait_lines("start", 1)
        r.lpush(f"{identity}-signals", "TTIN")      # Sidekiq's Process#dump_threads
        # faulthandler's frame line of the running job (SlowJob.handle, in time.sleep)
        sv.wait_log(" in handle\n", timeout=10)
        assert "supervised.py\", line" in sv.log()
        assert f"the stacks of children {child} follow" in sv.log()
        assert sv.workers() == [child] and "pool sizes now" not in sv.log()
        sv.signal(signal.SIGTERM)
        assert sv.wait_exit() == 0

    @sidekiq_only
    def test_web_ui_quiet_and_stop_reach_the_supervisor(self, supervise, backend):
        r = backend.r
        sv = supervise(backend.app, "--processes", "2", env=backend.env)
        sv.wait_workers(2, titled="idle")
        identity = backend.identity()
        assert identity.split(":")[1] == str(sv.pid)
        r.lpush(f"{identity}-signals", "TSTP")          # what the Web UI's "Quiet" button does
        wait_for(lambda: r.hget(identity, "quiet") == "true", message="quiet in the process hash")
        sv.wait_workers(2, titled="quiet")
        r.lpush(f"{identity}-signals", "TERM")          # the "Stop" button
        assert sv.wait_exit(10) == 0
        assert "remote signal TERM received" in sv.log()
        assert identity not in r.smembers("processes")

"""The real `jobrunner run` on the Sidekiq backend, driven with real signals and remote ones.

Each test starts `python -m jobrunner run apps.redis_app:registry` on the flushed test database
(``redis_url``), with its own queue, and synchronises on the jobs' output file, the log, process
titles and Redis keys. ``redis_app`` runs the housekeeper's heartbeat and poller every ~0.5 s
instead of ~5 s, so delayed jobs, retries and remote signals are seen within a second.
"""

import json
import signal
import time
import uuid

import pytest
import redis

import jobrunner
from helpers import alive, wait_for
from jobrunner.process.pool import MAX_BOOT_FAILURES
from supervisor_support import (assert_one_recycle_at_a_time, elapsed, senders, signal_pid,
                                supervise)  # noqa: F401  (supervise is a fixture)

pytestmark = pytest.mark.slow


@pytest.fixture
def queue():
    return "q_" + uuid.uuid4().hex[:10]


@pytest.fixture
def env(redis_url, queue):
    return {"JOBRUNNER_REDIS_URL": redis_url, "TEST_QUEUE": queue, "JOBRUNNER_LOG_LEVEL": "INFO"}


@pytest.fixture
def jobs(queue):
    return senders(jobrunner.SidekiqEnqueuer, queue)


@pytest.fixture
def r(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def zset_items(r, key):
    return [json.loads(raw) for raw in r.zrange(key, 0, -1)]


def inflight_lists(r):
    return [key for key in r.scan_iter("jobrunner:inflight:*") if r.llen(key)]


def queue_is_drained(r, queue):
    return r.llen(f"queue:{queue}") == 0 and not inflight_lists(r)


# -- delivery -----------------------------------------------------------------------------

def test_delivery_exactly_once_delay_and_dead(supervise, env, jobs, r, queue):
    jobs["Record"].enqueue_batch(r, [{"n": n} for n in range(30)])
    for n in range(30, 40):
        jobs["Record"].enqueue(r, {"n": n})
    jobs["AlwaysFails"].enqueue(r, {"n": 700})
    delayed_at = time.time()
    jobs["Record"].enqueue_in(r, 2, {"n": 500})

    sv = supervise("redis_app", "--processes", "2", env=env)
    sv.wait_lines("ran", 41)
    wait_for(lambda: r.zcard("dead") == 1, message="the failing job in the dead set")
    wait_for(lambda: queue_is_drained(r, queue) and r.zcard("schedule") == 0
             and r.zcard("retry") == 0, message="nothing left to run")
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0

    assert sv.ran() == {n: 1 for n in [*range(40), 500]}      # none missing, none twice
    (delayed,) = [float(row[2]) for row in sv.lines("ran") if row[1] == "500"]
    assert delayed >= delayed_at + 2, "the delayed job ran before its delay"
    assert sv.ran("fail") == {700: 2}
    (dead,) = zset_items(r, "dead")
    assert dead["class"] == "AlwaysFails" and dead["args"] == [{"n": 700}]
    assert (dead["error_class"], dead["error_message"]) == ("ValueError", "boom 700")
    assert dead["retry_count"] == 1 and dead["queue"] == queue
    assert {"failed_at", "retried_at"} <= set(dead)
    assert int(r.get("stat:processed")) == 43 and int(r.get("stat:failed")) == 2
    hooks = [row for row in sv.middleware_lines() if row[1] == "AlwaysFails"]
    assert [row[3] for row in hooks if row[0] == "before"] == ["1", "2"]
    assert [row[3] for row in hooks if row[0] == "after"] == ["retry", "dead"]


# -- stopping -----------------------------------------------------------------------------

def test_graceful_stop_with_int_lets_the_running_job_finish(supervise, env, jobs, r, queue):
    jobs["Slow"].enqueue(r, {"n": 1, "seconds": 1.0})
    sv = supervise("redis_app", "--processes", "2", "--shutdown-timeout", "10", env=env)
    sv.wait_lines("start", 1)
    sv.signal(signal.SIGINT)
    assert sv.wait_exit(10) == 0
    assert sv.lines("end") == [["end", "1"]]
    assert queue_is_drained(r, queue)
    assert int(r.get("stat:processed")) == 1
    assert "SIGINT: stopping" in sv.log()


def test_hard_stop_puts_the_exact_job_back(supervise, env, jobs, r, queue):
    jobs["Slow"].enqueue(r, {"n": 1, "seconds": 30})
    original = r.lrange(f"queue:{queue}", 0, -1)
    sv = supervise("redis_app", "--processes", "1", "--shutdown-timeout", "1", env=env)
    sv.wait_lines("start", 1)
    started = time.monotonic()
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit(10) == 0
    assert 1.0 <= elapsed(started) < 5.0
    assert sv.lines("end") == []
    assert r.lrange(f"queue:{queue}", 0, -1) == original     # byte for byte
    assert not inflight_lists(r) and r.zcard("retry") == 0
    assert r.get("stat:failed") in (None, "0")


def test_a_second_term_stops_at_once_and_still_requeues(supervise, env, jobs, r, queue):
    jobs["Slow"].enqueue(r, {"n": 1, "seconds": 30})
    original = r.lrange(f"queue:{queue}", 0, -1)
    sv = supervise("redis_app", "--processes", "1", "--shutdown-timeout", "60", env=env)
    sv.wait_lines("start", 1)
    sv.signal(signal.SIGTERM)
    sv.wait_log("SIGTERM: stopping")
    started = time.monotonic()
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit(10) == 0
    assert elapsed(started) < 4.0
    assert r.lrange(f"queue:{queue}", 0, -1) == original


# -- quiet, resizing, remote signals ------------------------------------------------------

def identity_of(r):
    return wait_for(lambda: next(iter(r.smembers("processes")), None),
                    message="the supervisor in `processes`")


def test_quiet_starts_no_job_and_shows_in_the_process_hash(supervise, env, jobs, r, queue):
    sv = supervise("redis_app", "--processes", "2", env=env)
    sv.wait_workers(2, titled="idle")
    identity = identity_of(r)
    sv.signal(signal.SIGTSTP)
    sv.wait_workers(2, titled="quiet")
    wait_for(lambda: r.hget(identity, "quiet") == "true", message="quiet in the process hash")
    jobs["Record"].enqueue(r, {"n": 1})
    # Observation window, not synchronisation: nothing may start while quiet.
    time.sleep(1.5)
    assert sv.lines() == [] and r.llen(f"queue:{queue}") == 1
    sv.signal(signal.SIGTTIN)
    sv.wait_workers(3, titled="quiet")
    wait_for(lambda: json.loads(r.hget(identity, "info"))["concurrency"] == 3,
             message="the new concurrency in the process hash")
    sv.signal(signal.SIGTTOU)
    sv.wait_workers(2)
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0
    assert sv.lines() == [] and r.llen(f"queue:{queue}") == 1
    assert identity not in r.smembers("processes")


def test_web_ui_quiet_and_stop_reach_the_supervisor(supervise, env, jobs, r, queue):
    sv = supervise("redis_app", "--processes", "2", env=env)
    sv.wait_workers(2, titled="idle")
    identity = identity_of(r)
    assert identity.split(":")[1] == str(sv.pid)
    r.lpush(f"{identity}-signals", "TSTP")          # what the Web UI's "Quiet" button does
    wait_for(lambda: r.hget(identity, "quiet") == "true", message="quiet in the process hash")
    sv.wait_workers(2, titled="quiet")
    r.lpush(f"{identity}-signals", "TERM")          # the "Stop" button
    assert sv.wait_exit(10) == 0
    assert "remote signal TERM received" in sv.log()
    assert identity not in r.smembers("processes")


# -- faults -------------------------------------------------------------------------------

def test_kill_9_of_a_busy_child_counts_a_failed_attempt_then_it_runs_again(
        supervise, env, jobs, r, queue):
    sv = supervise("redis_app", "--processes", "2", env=env)
    sv.wait_workers(2)
    jid = jobs["DiesOnce"].enqueue(r, {"n": 1})
    ((_, _, pid),) = sv.wait_lines("start", 1)
    signal_pid(int(pid), signal.SIGKILL)
    # The worker's backoff is 0: the crashed run goes through the retry set and runs again
    # as its second attempt (the middleware records the attempt of each run).
    sv.wait_lines("ran", 1)
    assert [row[3] for row in sv.middleware_lines() if row[0] == "before"] == ["1", "2"]
    # the rerun's ack travels with its child's next fetch: the in-flight list empties soon
    wait_for(lambda: not inflight_lists(r), message="no job left in flight")
    assert not r.zcard("retry") and not r.zcard("dead")
    replaced = sv.wait_workers(2)
    assert int(pid) not in replaced
    assert f"job {jid} of a dead child: retry" in sv.log()
    assert f"child {pid} exited unexpectedly (killed by SIGKILL) running job {jid}" in sv.log()
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0
    assert int(r.get("stat:failed")) == 1 and int(r.get("stat:processed")) == 2


def test_kill_9_of_the_supervisor_leaves_no_child_and_the_job_back(
        supervise, env, jobs, r, queue):
    jobs["Slow"].enqueue(r, {"n": 1, "seconds": 30})
    original = r.lrange(f"queue:{queue}", 0, -1)
    sv = supervise("redis_app", "--processes", "2", env=env)
    sv.wait_lines("start", 1)
    identity = identity_of(r)
    children = list(sv.children())
    assert len(children) == 3
    sv.signal(signal.SIGKILL)
    assert sv.wait_exit() == -signal.SIGKILL
    wait_for(lambda: not any(alive(pid) for pid in children), timeout=5,
             message="every child to die with the supervisor")
    assert r.lrange(f"queue:{queue}", 0, -1) == original
    assert not inflight_lists(r)
    # the housekeeper cleared the heartbeat on its way out: no ghost in Sidekiq's UI
    assert identity not in r.smembers("processes")


def test_job_timeouts_alarm_then_supervisor_kill(supervise, env, jobs, r, queue):
    jobs["TooSlow"].enqueue(r, {"n": 1})
    jobs["IgnoresAlarm"].enqueue(r, {"n": 2})
    sv = supervise("redis_app", "--processes", "2", env=env)
    starts = {row[1]: int(row[2]) for row in sv.wait_lines("start", 2)}
    started = time.monotonic()
    wait_for(lambda: r.zcard("dead") == 2, timeout=12, message="both jobs dead")
    dead = {item["class"]: item for item in zset_items(r, "dead")}
    assert dead["TooSlow"]["error_class"] == "JobTimeout"
    assert dead["IgnoresAlarm"]["error_class"] == "JobTimeout"
    assert "killed by the supervisor" in dead["IgnoresAlarm"]["error_message"]
    assert elapsed(started) >= 4.0
    assert f"killing sidekiq child {starts['2']}: timeout" in sv.log()
    assert not alive(starts["2"]) and alive(starts["1"])
    assert not inflight_lists(r)
    sv.wait_workers(2)
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0


# -- failing to start ---------------------------------------------------------------------

def test_children_crashing_at_start_stop_the_supervisor_with_code_5(supervise, env):
    sv = supervise("broken_app", "--processes", "2", env=dict(env, TEST_BACKEND="sidekiq"))
    assert sv.wait_exit(20) == 5
    log = sv.log()
    assert log.count("Traceback (most recent call last)") == 1
    assert log.count("failed at start") == MAX_BOOT_FAILURES - 1
    assert log.strip().splitlines()[-1].startswith(
        "jobrunner: sidekiq children keep failing at start (5 in a row), giving up: "
        "AttributeError")


def test_unreachable_redis_exits_4(supervise, env):
    sv = supervise("redis_app", "--redis-url", "redis://127.0.0.1:1/0", env=env)
    assert sv.wait_exit(15) == 4
    assert "Redis at redis://127.0.0.1:1/0 is not usable" in sv.log()


# -- recycling ----------------------------------------------------------------------------

def test_max_jobs_recycles_one_child_at_a_time_and_loses_nothing(supervise, env, jobs, r, queue):
    jobs["Slow"].enqueue_batch(r, [{"n": n, "seconds": 0.02} for n in range(40)])
    sv = supervise("redis_app", "--processes", "2", "--max-jobs", "3", env=env)
    sv.wait_lines("end", 40)
    wait_for(lambda: queue_is_drained(r, queue), message="an empty queue")
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0
    assert sv.ran("start") == sv.ran("end") == {n: 1 for n in range(40)}
    assert len({row[2] for row in sv.lines("start")}) >= 5
    assert_one_recycle_at_a_time(sv.log(), "sidekiq")
    assert int(r.get("stat:processed")) == 40

"""No job lost on the Sidekiq backend: faults injected into a real `jobrunner run`.

As ``test_faults_pgmq.py``: kill or restart something at a chosen point, then check the set of
job ids that completed (none missing; a job may run twice). The Redis that gets restarted or
reconfigured is a private ``redis-server`` with AOF on, never the shared one.
"""

import json
import os
import signal
import uuid

import pytest
import redis

import jobrunner
from helpers import PrivateRedis, kill_at_markers, wait_for
from jobrunner.backends.sidekiq.backend import SidekiqBackend, redis_warnings
from jobrunner.config import Settings
from supervisor_support import group_members, supervise  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow


@pytest.fixture
def private_redis(tmp_path):
    server = PrivateRedis(tmp_path / "redis").start()
    yield server
    server.stop()


def make_senders(queue):
    names = {"Record": queue, "Staged": queue + "_stage", "Poison": queue}
    extra = {"Poison": {"max_retries": 2}}
    return {name: type(name, (jobrunner.Worker,), {
        "enqueuer": jobrunner.SidekiqEnqueuer, "queue": q, **extra.get(name, {}),
        "handle": lambda self, args: None}) for name, q in names.items()}


class Faults:
    def __init__(self, url, tmp_path):
        self.url = url
        self.r = redis.Redis.from_url(url, decode_responses=True)
        self.queue = "f_" + uuid.uuid4().hex[:10]
        self.jobs = make_senders(self.queue)
        self.out = str(tmp_path / "jobs.out")
        self.env = {"JOBRUNNER_REDIS_URL": url, "TEST_BACKEND": "sidekiq",
                    "TEST_QUEUE": self.queue, "FAULT_FAST": "1", "JOBRUNNER_LOG_LEVEL": "INFO",
                    "FAULT_OUT": self.out}

    def enqueue(self, name, args_list):
        self.jobs[name].enqueue_batch(self.r, args_list)

    def ran(self):
        try:
            with open(self.out) as handle:
                rows = [line.split() for line in handle if line.startswith("ran ")]
        except FileNotFoundError:
            return {}
        counts = {}
        for row in rows:
            counts[int(row[1])] = counts.get(int(row[1]), 0) + 1
        return counts

    def wait_all_ran(self, ids, timeout=30.0, message=""):
        wait_for(lambda: set(ids) <= set(self.ran()), timeout, 0.05,
                 message=f"jobs {sorted(set(ids) - set(self.ran()))} to run {message}")

    def drained(self):
        try:
            return (self.r.llen(f"queue:{self.queue}") == 0
                    and self.r.llen(f"queue:{self.queue}_stage") == 0
                    and self.r.zcard("retry") == 0
                    and not any(self.r.llen(k) for k in self.r.scan_iter("jobrunner:inflight:*")))
        except redis.ConnectionError:
            return False


@pytest.fixture
def faults(redis_url, tmp_path):
    f = Faults(redis_url, tmp_path)
    yield f
    f.r.close()


# -- children killed at each stage -----------------------------------------------------------

def test_sigkill_of_a_busy_child_at_each_stage_loses_no_job(supervise, faults):
    stages = {1: "fetch", 2: "run", 3: "ack"}
    faults.enqueue("Staged", [{"n": n, "stage": s} for n, s in stages.items()])
    faults.enqueue("Record", [{"n": n} for n in range(100, 140)])
    sv = supervise("fault_app", "--processes", "4", "--timeout-grace", "0.5", env=faults.env)
    kill_at_markers(faults.out, stages)
    faults.wait_all_ran([*stages, *range(100, 140)])
    wait_for(faults.drained, 15, message="every job settled")
    assert faults.ran()[3] >= 2, (  # ran, killed before the ack: it ran again (at least once)
        faults.ran(), faults.r.lrange(f"queue:{faults.queue}_stage", 0, -1), sv.log()[-4000:])
    assert sv.cli.proc.poll() is None
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0


# -- a whole supervisor killed (a host crash) --------------------------------------------------

def test_sigkill_of_the_whole_supervisor_recovered_by_another_via_heartbeat_expiry(supervise,
                                                                                   faults):
    ids = list(range(30))
    faults.enqueue("Record", [{"n": n, "seconds": 0.4} for n in ids])
    first = supervise("fault_app", "--processes", "4", env=faults.env, name="first")
    wait_for(lambda: len(faults.ran()) >= 4, 20, message="some jobs done")
    os.killpg(first.pid, signal.SIGKILL)           # a host crash: children die too
    wait_for(lambda: not group_members(first.pid), 5, message="the first group gone")
    held = [k for k in faults.r.scan_iter("jobrunner:inflight:*") if faults.r.llen(k)]
    assert held, "the kill left no job in flight: the test proves nothing"
    second = supervise("fault_app", "--processes", "4", env=faults.env, name="second")
    faults.wait_all_ran(ids, 30, "after the first supervisor's heartbeat expired")
    wait_for(faults.drained, 15, message="every job settled")
    assert "its supervisor's heartbeat expired" in second.log()
    second.signal(signal.SIGTERM)
    assert second.wait_exit() == 0


# -- a Redis restart under load ----------------------------------------------------------------

def test_redis_restart_under_load_loses_nothing_and_the_supervisor_stays(supervise,
                                                                         private_redis,
                                                                         tmp_path):
    faults = Faults(private_redis.url, tmp_path)
    ids = list(range(400))
    faults.enqueue("Record", [{"n": n, "seconds": 0.01} for n in ids])
    sv = supervise("fault_app", "--processes", "3", env=faults.env)
    wait_for(lambda: len(faults.ran()) >= 40, 20, message="load running")
    private_redis.restart(down_for=2.0)
    faults.wait_all_ran(ids, 60, "after the restart")
    wait_for(faults.drained, 20, message="every job settled")
    log = sv.log()
    assert sv.cli.proc.poll() is None, log[-3000:]
    assert "lost the backend connection" in log or "cannot connect" in log, log[-3000:]
    assert "stopped on its own" not in log           # no child exited 0 on a lost connection
    assert "exited unexpectedly" not in log
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0
    faults.r.close()


# -- a poison job ------------------------------------------------------------------------------

def test_poison_job_ends_dead_with_the_reason_and_the_pool_keeps_working(supervise, faults):
    faults.enqueue("Poison", [{"n": 1}])
    faults.enqueue("Record", [{"n": n} for n in range(100, 120)])
    sv = supervise("fault_app", "--processes", "2", env=faults.env)
    wait_for(lambda: faults.r.zcard("dead"), 30, message="the poison job in the dead set")
    (dead,) = [json.loads(raw) for raw in faults.r.zrange("dead", 0, -1)]
    assert dead["class"] == "Poison" and dead["error_class"] == "jobrunner.ChildDied"
    assert dead["retry_count"] == 2                   # first run + 2 retries
    faults.wait_all_ran(range(100, 120))
    with open(faults.out) as handle:
        assert sum(1 for line in handle if line.startswith("poison ")) == 3
    assert sv.cli.proc.poll() is None
    wait_for(lambda: len(sv.workers()) == 2, 10, message="the pool back at its size")
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0


# -- enqueue-side faults -----------------------------------------------------------------------

def test_a_failed_enqueue_raises_to_the_caller(private_redis, tmp_path):
    faults = Faults(private_redis.url, tmp_path)
    private_redis.stop()
    with pytest.raises(redis.ConnectionError):
        faults.jobs["Record"].enqueue(faults.r, {"n": 1})
    with pytest.raises(redis.ConnectionError):
        faults.jobs["Record"].enqueue_batch(faults.r, [{"n": 2}, {"n": 3}])
    private_redis.start()
    assert faults.r.llen(f"queue:{faults.queue}") == 0
    faults.r.close()


def test_a_batch_enqueue_lands_fully_or_raises(private_redis, tmp_path):
    faults = Faults(private_redis.url, tmp_path)
    key = f"queue:{faults.queue}"
    faults.enqueue("Record", [{"n": n} for n in range(1000)])
    assert faults.r.llen(key) == 1000                          # all of it
    # The server refuses writes (maxmemory reached, noeviction): the batch raises, none lands.
    faults.r.config_set("maxmemory", "1")
    with pytest.raises(redis.ResponseError, match="maxmemory"):
        faults.enqueue("Record", [{"n": n} for n in range(1000, 2000)])
    faults.r.config_set("maxmemory", "0")
    assert faults.r.llen(key) == 1000
    faults.r.close()


# -- start-up checks ---------------------------------------------------------------------------

def test_an_evicting_redis_is_warned_about_at_start(supervise, private_redis, tmp_path):
    faults = Faults(private_redis.url, tmp_path)
    faults.r.config_set("maxmemory-policy", "allkeys-lru")
    sv = supervise("fault_app", "--processes", "1", env=faults.env)
    sv.wait_log("maxmemory-policy allkeys-lru", 15)
    assert "set it to noeviction" in sv.log()
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0
    faults.r.close()


def test_redis_older_than_6_2_is_warned_about_for_reliable_fetch():
    memory = {"maxmemory_policy": "noeviction"}
    (warning,) = redis_warnings({"redis_version": "6.0.16"}, memory, "reliable", "r")
    assert "older than 6.2" in warning and "LMOVE" in warning and "basic" in warning
    (warning,) = redis_warnings({"redis_version": "5.0.7"}, memory, "basic", "r")
    assert "older than 6.2" in warning and "LMOVE" not in warning
    assert redis_warnings({"redis_version": "6.2.0"}, memory, "reliable", "r") == []
    assert redis_warnings({"redis_version": "7.2.4"}, memory, "reliable", "r") == []


def test_the_check_reports_the_policy_of_a_real_server(private_redis):
    backend = SidekiqBackend(Settings(redis_url=private_redis.url), jobrunner.Registry())
    assert backend.check() == []
    client = redis.Redis.from_url(private_redis.url)
    client.config_set("maxmemory-policy", "volatile-lru")
    (warning,) = backend.check()
    assert "volatile-lru" in warning
    client.close()

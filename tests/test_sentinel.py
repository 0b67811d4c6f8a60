"""Redis Sentinel: ``redis+sentinel://`` URLs, a supervisor that follows a failover under load,
and what a push can lose with and without the durable enqueue (``WAIT``).

The failover tests run a private master, its replica and three sentinels
(``sentinel_support.py``), SIGKILL the master while a thread pushes jobs through a
``Sentinel.master_for`` client, and print what was lost (acknowledged pushes that never ran),
run twice, and how long the sentinels and the supervisor took.
"""

import json
import signal
import time
import uuid

import pytest
import redis

import jobrunner
from helpers import free_port, read_lines, wait_for
from jobrunner import sentinel_url
from jobrunner.backends.sidekiq.client import make_client
from jobrunner.errors import ConfigError
from jobrunner.process.child import MAX_RECONNECT_DELAY
from sentinel_support import (DOWN_AFTER_MS, FAILOVER_TIMEOUT_MS, SERVICE, Replication,
                              SentinelGroup, Stream)
from supervisor_support import elapsed, supervise  # noqa: F401 (a fixture)
from test_cli_admin import run_cli

#: The sentinels call the master down after DOWN_AFTER_MS and elect a leader that promotes
#: the replica; an election that fails is tried again after twice the failover timeout.
PROMOTED_WITHIN = (DOWN_AFTER_MS + 2 * FAILOVER_TIMEOUT_MS) / 1000 + 1.0
#: After the promotion a child's next connection attempt comes within its current backoff
#: (doubling from 0.2 s, capped at MAX_RECONNECT_DELAY: never more than the time since the
#: kill); then one fetch and one run, on a busy 2-core machine.
RUN_SLACK = 2.0


# -- the URL -----------------------------------------------------------------------------------

def test_a_sentinel_url_names_the_sentinels_the_master_and_the_options():
    parsed = sentinel_url.parse("redis+sentinel://app:s%40cret@s1,s2:26380,[::1]:26381/cache/3"
                                "?sentinel_password=pw&min_other_sentinels=1&socket_timeout=2")
    assert parsed.sentinels == (("s1", 26379), ("s2", 26380), ("::1", 26381))
    assert (parsed.service, parsed.db, parsed.username, parsed.password) == (
        "cache", 3, "app", "s@cret")
    assert (parsed.sentinel_username, parsed.sentinel_password) == (None, "pw")
    assert parsed.min_other_sentinels == 1 and parsed.options == "socket_timeout=2"
    # A userinfo without ":" is a password, as redis-py reads a redis:// URL.
    assert sentinel_url.parse("redis+sentinel://pw@s1/m").password == "pw"
    assert sentinel_url.parse("redis+sentinel://s1/m/").db == 0


def test_the_client_keeps_jobrunners_options_and_the_urls_own():
    url = ("redis+sentinel://:pw@127.0.0.1:1,127.0.0.1:2/cache/2?sentinel_password=spw"
           "&health_check_interval=7")
    client = make_client(url, socket_timeout=11, connect_timeout=3)
    try:
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["db"], kwargs["password"], kwargs["health_check_interval"]) == (2, "pw", 7)
        assert kwargs["decode_responses"] and kwargs["encoding_errors"] == "surrogateescape"
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (11, 3)
        assert kwargs["socket_keepalive"] and kwargs["socket_keepalive_options"]
        asking = client.connection_pool.sentinel_manager.sentinel_kwargs
        # The sentinels get their own password, and the short time-out for every command.
        assert (asking["password"], asking["socket_timeout"]) == ("spw", 3)
        started = time.monotonic()
        with pytest.raises(redis.ConnectionError) as caught:
            client.ping()                         # no sentinel on ports 1 and 2
        assert "No master found for 'cache'" in str(caught.value)
        # One refused connection per sentinel, not redis-py's retries with backoff (seconds).
        assert elapsed(started) < 1.0
    finally:
        client.close()


def test_durable_takes_a_number_of_replicas_and_a_time_out():
    for bad in ({"replicas": 0}, {"replicas": True}, {"timeout": 0}, {"timeout": "1"}):
        with pytest.raises(ConfigError):
            jobrunner.SidekiqEnqueuer.durable(**bad)


# -- the durable enqueue, on a master and its replica ------------------------------------------

@pytest.fixture(scope="module")
def shared_replication(tmp_path_factory):
    """One master and replica for the durable pushes: neither test fails it over."""
    pair = Replication(tmp_path_factory.mktemp("replication") / "redis")
    yield pair
    pair.close()


@pytest.fixture
def replication(shared_replication):
    """The shared pair, emptied on both sides (``WAIT`` for the replica to have the flush),
    so that each test sees only its own pushes."""
    master = redis.Redis(port=shared_replication.master.port)
    try:
        master.flushall()
        assert master.wait(1, 5000) == 1
    finally:
        master.close()
    return shared_replication


def sender(enqueuer, queue):
    """fault_app's ``Record``, to enqueue from the test process."""
    return type("Record", (jobrunner.Worker,), {"enqueuer": enqueuer, "queue": queue,
                                                "handle": lambda self, args: None})


def test_a_durable_push_returns_once_a_replica_has_it(replication):
    conn = redis.Redis(port=replication.master.port, decode_responses=True)
    replica = redis.Redis(port=replication.replica.port, decode_responses=True)
    worker = sender(jobrunner.SidekiqEnqueuer.durable(replicas=1, timeout=2.0), "d")
    jid = worker.enqueue(conn, {"n": 1})
    later = worker.enqueue_in(conn, 60, {"n": 2})
    # Read on the replica itself: WAIT returned, so it holds both already.
    assert [json.loads(raw)["jid"] for raw in replica.lrange("queue:d", 0, -1)] == [jid]
    assert [json.loads(raw)["jid"] for raw in replica.zrange("schedule", 0, -1)] == [later]
    assert replica.smembers("queues") == {"d"}


def test_a_durable_push_no_replica_confirmed_raises_and_is_on_the_master(replication):
    conn = redis.Redis(port=replication.master.port, decode_responses=True)
    worker = sender(jobrunner.SidekiqEnqueuer.durable(replicas=2, timeout=0.2), "d")
    with pytest.raises(jobrunner.NotReplicated) as caught:
        worker.enqueue_batch(conn, [{"n": 1}, {"n": 2}])
    error = caught.value
    assert (error.acknowledged, error.wanted, len(error.job_ids)) == (1, 2, 2)
    assert "1 of 2 replica(s) confirmed them within 0.2s" in str(error)
    assert sorted(json.loads(raw)["jid"] for raw in conn.lrange("queue:d", 0, -1)) == sorted(
        error.job_ids)


# -- a failover under load ---------------------------------------------------------------------

@pytest.fixture
def group(tmp_path):
    made = SentinelGroup(tmp_path / "redis")
    yield made
    made.close()


class Run:
    """One supervisor on the group's sentinel URL, draining fault_app's ``Record`` jobs."""

    def __init__(self, group, supervise, tmp_path):
        self.group = group
        self.queue = "s_" + uuid.uuid4().hex[:10]
        self.out = str(tmp_path / "jobs.out")
        self.env = {"JOBRUNNER_REDIS_URL": group.url(), "TEST_BACKEND": "sidekiq",
                    "TEST_QUEUE": self.queue, "FAULT_FAST": "1", "FAULT_OUT": self.out}
        self.sv = supervise("fault_app", "--processes", "2", "--timeout-grace", "0.5",
                            env=self.env)
        self.probe = group.master_client()

    def ran(self):
        counts = {}
        for line in read_lines(self.out):
            kind, n, _ = line.split()
            if kind == "ran":
                counts[int(n)] = counts.get(int(n), 0) + 1
        return counts

    def drained(self):
        try:
            return (self.probe.llen(f"queue:{self.queue}") == 0 and self.probe.zcard("retry") == 0
                    and not any(self.probe.llen(key)
                                for key in self.probe.scan_iter("jobrunner:inflight:*")))
        except redis.ConnectionError:
            return False

    def fail_over(self, stream, durable):
        """Kill the master mid-load; returns (seconds to promotion, seconds to the first run
        of a push made after the kill). A durable run brings the old master back as a
        replica, so that pushes are confirmed again."""
        wait_for(lambda: len(self.ran()) >= 150, 30, message="the load running")
        old = self.group.master.port
        killed = self.group.kill_master()
        wait_for(lambda: self.group.master_port() not in (None, old), PROMOTED_WITHIN + 5,
                 0.02, message="the sentinels promoting the replica")
        promoted = elapsed(killed)
        if durable:
            # Pushes to the new master are refused until a replica confirms them again.
            wait_for(lambda: stream.unconfirmed, 30, 0.02,
                     message="a push the lone new master could not replicate")
            self.group.rejoin(self.group.master, self.group.master_port())
        wait_for(lambda: set(stream.landed_after(killed)) & set(self.ran()), 60, 0.02,
                 message="a job pushed after the kill to run")
        recovered = elapsed(killed)
        after = len(stream.acked_after(killed))
        wait_for(lambda: len(stream.acked_after(killed)) >= after + 100, 30,
                 message="100 more acknowledged pushes")
        stream.stop()
        pushed = set(stream.landed_after(killed))
        wait_for(lambda: pushed <= set(self.ran()), 30, 0.05,
                 message="every push made after the failover to run")
        wait_for(self.drained, 30, message="every job settled")
        return promoted, recovered

    def report(self, title, stream, promoted, recovered):
        ran = self.ran()
        lost = sorted(set(stream.acked) - set(ran))
        twice = sorted(n for n, count in ran.items() if count > 1)
        refused_ran = len(set(stream.unconfirmed) & set(ran))
        print(f"\n{title}: promoted {promoted:.2f}s after the kill; jobs ran again "
              f"{recovered:.2f}s after it; acknowledged {len(stream.acked)}, lost {len(lost)} "
              f"{lost[:10]}, run twice {len(twice)}; push errors {len(stream.failed)}, "
              f"not replicated {len(stream.unconfirmed)} (of which ran {refused_ran})")
        return lost

    def close(self):
        self.probe.close()


@pytest.fixture
def run(group, supervise, tmp_path):
    made = Run(group, supervise, tmp_path)
    yield made
    made.close()


def assert_followed(run, promoted, recovered):
    assert promoted <= PROMOTED_WITHIN, promoted
    assert recovered - promoted <= min(promoted, MAX_RECONNECT_DELAY) + 0.2 + RUN_SLACK, (
        promoted, recovered, run.sv.log()[-3000:])
    log = run.sv.log()
    assert run.sv.cli.proc.poll() is None, log[-3000:]
    assert "lost the backend connection" in log or "cannot connect" in log, log[-3000:]
    assert "exited unexpectedly" not in log and "giving up" not in log, log[-3000:]


def stop(run):
    run.sv.signal(signal.SIGTERM)
    assert run.sv.wait_exit() == 0


def test_a_supervisor_follows_a_failover_and_the_cli_the_new_master(group, run):
    stream = Stream(group.master_client(), sender(jobrunner.SidekiqEnqueuer, run.queue)).start()
    promoted, recovered = run.fail_over(stream, durable=False)
    run.report("sentinel failover, plain pushes", stream, promoted, recovered)
    assert_followed(run, promoted, recovered)
    # What an operator sees now comes from the promoted replica.
    done = run_cli("stats", "--json", "--backend", "sidekiq", JOBRUNNER_REDIS_URL=group.url())
    assert done.returncode == 0, done.stderr
    sidekiq = json.loads(done.stdout)["backends"]["sidekiq"]
    assert sidekiq["status"] == "ok", sidekiq
    [queue] = [q for q in sidekiq["queues"] if q["name"] == run.queue]
    assert queue["waiting"] == 0
    # The supervisor's heartbeat, written to the new master since the failover.
    assert [p for p in sidekiq["processes"] if str(run.sv.pid) in json.dumps(p)], sidekiq
    stop(run)


def test_with_durable_pushes_a_failover_loses_no_acknowledged_job(group, run):
    durable = jobrunner.SidekiqEnqueuer.durable(replicas=1, timeout=0.5)
    stream = Stream(group.master_client(), sender(durable, run.queue)).start()
    promoted, recovered = run.fail_over(stream, durable=True)
    lost = run.report("sentinel failover, durable pushes (WAIT 1)", stream, promoted, recovered)
    assert lost == []
    assert_followed(run, promoted, recovered)
    stop(run)


def test_the_cli_names_a_sentinel_url_that_finds_no_master_and_hides_its_password():
    url = f"redis+sentinel://:hunter2@127.0.0.1:{free_port()}/{SERVICE}"
    done = run_cli("stats", "--json", "--backend", "sidekiq", JOBRUNNER_REDIS_URL=url)
    assert done.returncode == 4, done.stderr
    sidekiq = json.loads(done.stdout)["backends"]["sidekiq"]
    assert sidekiq["status"] == "unavailable" and "No master found" in sidekiq["error"]
    assert "hunter2" not in done.stdout + done.stderr

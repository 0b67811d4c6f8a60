"""No job lost on pgmq or Sidekiq when a child, a supervisor or a server fails under a real run."""

import json
import os
import signal
import subprocess
import time
import uuid

import psycopg2
import psycopg2.extras
import pytest
import redis

import jobrunner
from helpers import PrivatePostgres, PrivateRedis, kill_at_markers, wait_for
from jobrunner.backends.pgmq.backend import PgmqBackend
from jobrunner.backends.sidekiq.backend import SidekiqBackend, redis_warnings
from jobrunner.config import Settings
from jobrunner.errors import BackendUnavailable
from jobrunner.job import ErrorInfo
from jobrunner.process.pool import MAX_BOOT_FAILURES, MAX_RESPAWN_DELAY
from supervisor_support import (group_members, pgmq_dead, sidekiq_dead,  # noqa: F401
                                supervise)  # (supervise is a fixture)

pytestmark = pytest.mark.slow

needs_private_pg = pytest.mark.skipif(not PrivatePostgres.available(),
                                      reason="needs root and /usr/lib/postgresql/15")


def make_senders(enqueuer, queue):
    """Workers named like fault_app's, to enqueue from the test process. Poison's
    ``max_retries`` travels in a Sidekiq payload, so it is set here as in the app."""
    names = {"Record": queue, "Staged": queue + "_stage", "Poison": queue, "Fragile": queue}
    extra = {"Poison": {"max_retries": 2}, "Fragile": {"max_retries": 0}}
    return {name: type(name, (jobrunner.Worker,), {
        "enqueuer": enqueuer, "queue": q, **extra.get(name, {}),
        "handle": lambda self, args: None}) for name, q in names.items()}


# Each test kills or restarts something at a chosen point, then checks the set of job ids that
# completed: none missing (a job may run twice after a fault: delivery is at least once).

class Faults:
    """One backend's side of a fault test: a queue of our own, its senders, what the jobs ran."""

    def __init__(self, tmp_path, server_env):
        self.queue = "f_" + uuid.uuid4().hex[:10]
        self.jobs = make_senders(self.enqueuer, self.queue)
        self.out = str(tmp_path / "jobs.out")
        self.env = dict(server_env, TEST_BACKEND=self.name, TEST_QUEUE=self.queue,
                        FAULT_FAST="1", JOBRUNNER_LOG_LEVEL="INFO", FAULT_OUT=self.out)

    def ran(self):
        """{n: how many times job n completed}, from fault_app's ``ran <n> <pid>`` lines."""
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


class PgmqFaults(Faults):
    """Faults on one Postgres: the queue tables read directly."""

    name = "pgmq"
    enqueuer = jobrunner.PgEnqueuer

    def __init__(self, dsn, tmp_path):
        self.dsn = dsn
        super().__init__(tmp_path, {"JOBRUNNER_PG_DSN": dsn})

    def enqueue(self, name, args_list):
        conn = psycopg2.connect(self.dsn)
        try:
            self.jobs[name].enqueue_batch(conn, args_list)
            conn.commit()
        finally:
            conn.close()

    def rows(self, table="q", queue=None):
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        try:
            with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                cur.execute(f'SELECT msg_id, read_ct, message, headers '
                            f'FROM pgmq."{table}_{queue or self.queue}" ORDER BY msg_id')
                return cur.fetchall()
        except psycopg2.errors.UndefinedTable:
            return []
        finally:
            conn.close()

    def stage_contents(self):
        return self.rows(queue=self.queue + "_stage")

    def in_flight(self):
        """Messages read by a consumer and not settled: leased until their vt."""
        return [r for r in self.rows() if r["read_ct"] >= 1]

    def dead_jobs(self):
        return [pgmq_dead(row) for row in self.rows("a")]

    def drained(self):
        return not self.rows() and not self.stage_contents()

    def close(self):
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            for q in (self.queue, self.queue + "_stage"):
                cur.execute("SELECT pgmq.drop_queue(%s) FROM pgmq.meta WHERE queue_name = %s",
                            (q, q))
        conn.close()


class SidekiqFaults(Faults):
    """Faults on one Redis: Sidekiq's keys and jobrunner's in-flight lists read directly."""

    name = "sidekiq"
    enqueuer = jobrunner.SidekiqEnqueuer

    def __init__(self, url, tmp_path):
        self.url = url
        self.r = redis.Redis.from_url(url, decode_responses=True)
        super().__init__(tmp_path, {"JOBRUNNER_REDIS_URL": url})

    def enqueue(self, name, args_list):
        self.jobs[name].enqueue_batch(self.r, args_list)

    def stage_contents(self):
        return self.r.lrange(f"queue:{self.queue}_stage", 0, -1)

    def in_flight(self):
        """The children's in-flight lists that hold a job."""
        return [k for k in self.r.scan_iter("jobrunner:inflight:*") if self.r.llen(k)]

    def dead_jobs(self):
        return [sidekiq_dead(json.loads(raw)) for raw in self.r.zrange("dead", 0, -1)]

    def drained(self):
        try:
            return (self.r.llen(f"queue:{self.queue}") == 0
                    and self.r.llen(f"queue:{self.queue}_stage") == 0
                    and self.r.zcard("retry") == 0
                    and not self.in_flight())
        except redis.ConnectionError:       # a restarted server may still be coming up
            return False

    def close(self):
        self.r.close()


@pytest.fixture(params=["pgmq", "sidekiq"])
def faults(request, tmp_path):
    """Faults on the run's own server of each backend (shared: never restarted)."""
    if request.param == "pgmq":
        made = PgmqFaults(request.getfixturevalue("pg_dsn"), tmp_path)
    else:
        made = SidekiqFaults(request.getfixturevalue("redis_url"), tmp_path)
    yield made
    made.close()


pgmq_only = pytest.mark.parametrize("faults", ["pgmq"], indirect=True)
sidekiq_only = pytest.mark.parametrize("faults", ["sidekiq"], indirect=True)


# Servers that get restarted or reconfigured are private ones, never the run's shared servers.

@pytest.fixture(scope="module")
def private_pg():
    server = PrivatePostgres.in_new_folder("jr-faults-").init()
    yield server
    server.destroy()


@pytest.fixture
def private_redis(tmp_path):
    server = PrivateRedis(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture(params=[pytest.param("pgmq", marks=needs_private_pg), "sidekiq"])
def restartable(request, tmp_path):
    """(a private server of the backend that the test may restart, Faults on it)."""
    if request.param == "pgmq":
        server = request.getfixturevalue("private_pg")
        made = PgmqFaults(server.dsn, tmp_path)
    else:
        server = request.getfixturevalue("private_redis")
        made = SidekiqFaults(server.url, tmp_path)
    yield server, made
    made.close()


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
        faults.ran(), faults.stage_contents(), sv.log()[-4000:])
    assert sv.cli.proc.poll() is None
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0


# -- a whole supervisor killed (a host crash) --------------------------------------------------

def test_sigkill_of_the_whole_supervisor_recovered_by_another(supervise, faults):
    # pgmq: the first supervisor's leases run out; Sidekiq: its heartbeat expires and the
    # second supervisor's housekeeper takes back what its children held.
    ids = list(range(30))
    faults.enqueue("Record", [{"n": n, "seconds": 0.4} for n in ids])
    first = supervise("fault_app", "--processes", "4", "--timeout-grace", "0.5",
                      env=faults.env, name="first")
    wait_for(lambda: len(faults.ran()) >= 4, 20, message="some jobs done")
    os.killpg(first.pid, signal.SIGKILL)           # a host crash: children die too
    wait_for(lambda: not group_members(first.pid), 5, message="the first group gone")
    assert faults.in_flight(), "the kill left no job in flight: the test proves nothing"
    second = supervise("fault_app", "--processes", "4", "--timeout-grace", "0.5",
                       env=faults.env, name="second")
    faults.wait_all_ran(ids, 30, "after the first supervisor's leases or heartbeat expired")
    wait_for(faults.drained, 15, message="every job settled")
    if faults.name == "sidekiq":    # pgmq has nothing to log: an expired lease just ends
        assert "its supervisor's heartbeat expired" in second.log()
    second.signal(signal.SIGTERM)
    assert second.wait_exit() == 0


# -- a server restart under load ---------------------------------------------------------------

def test_server_restart_under_load_loses_nothing_and_the_supervisor_stays(supervise,
                                                                          restartable):
    server, faults = restartable
    ids = list(range(400))
    faults.enqueue("Record", [{"n": n, "seconds": 0.01} for n in ids])
    sv = supervise("fault_app", "--processes", "3", "--timeout-grace", "0.5", env=faults.env)
    wait_for(lambda: len(faults.ran()) >= 40, 20, message="load running")
    server.restart(down_for=2.0)
    faults.wait_all_ran(ids, 60, "after the restart")
    wait_for(faults.drained, 20, message="every job settled")
    log = sv.log()
    assert sv.cli.proc.poll() is None, log[-3000:]
    assert "lost the backend connection" in log or "cannot connect" in log, log[-3000:]
    assert "stopped on its own" not in log           # no child exited 0 on a lost connection
    assert "exited unexpectedly" not in log
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0


# -- a poison job ------------------------------------------------------------------------------

def test_poison_job_ends_dead_with_the_reason_and_the_pool_keeps_working(supervise, faults):
    faults.enqueue("Poison", [{"n": 1}])
    faults.enqueue("Record", [{"n": n} for n in range(100, 120)])
    sv = supervise("fault_app", "--processes", "2", env=faults.env)
    wait_for(faults.dead_jobs, 30, message="the poison job dead")
    (dead,) = faults.dead_jobs()
    assert dead.worker == "Poison" and dead.error_class == "jobrunner.ChildDied"
    assert dead.attempts == 3                                    # first run + 2 retries
    if faults.name == "pgmq":       # and each run was a read of the message
        assert dead.raw["read_ct"] == 3
    faults.wait_all_ran(range(100, 120))
    with open(faults.out) as handle:
        assert sum(1 for line in handle if line.startswith("poison ")) == 3
    assert sv.cli.proc.poll() is None
    wait_for(lambda: len(sv.workers()) == 2, 10, message="the pool back at its size")
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0


# -- pgmq only ---------------------------------------------------------------------------------

def _terminate(conn):
    """End ``conn``'s session from the server side, as a Postgres restart or failover would."""
    killer = psycopg2.connect(conn.dsn)
    killer.autocommit = True
    with killer.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (conn.get_backend_pid(),))
    killer.close()


def expire_leases(dsn, queue):
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'UPDATE pgmq."q_{queue}" SET vt = clock_timestamp()')
    conn.close()


class TestPgmqOnly:
    """Faults of pgmq's own: prefetched batches, leases, the caller's transaction, the install."""

    @pgmq_only
    def test_a_child_killed_mid_batch_costs_one_rerun_not_a_lease_wait(self, supervise, faults):
        # Real leases (no FAULT_FAST): Staged's is 4 + 0.5 + 30 s. One batch of eight: jobs 1-3
        # succeed (their acks held for the next fetch), job 4 pauses in its run and the child is
        # killed there, holding 5-8 unstarted.
        env = {k: v for k, v in faults.env.items() if k != "FAULT_FAST"}
        env["JOBRUNNER_PGMQ_BATCH"] = "8"
        ids = list(range(1, 9))
        faults.enqueue("Staged", [{"n": n, "stage": "run" if n == 4 else None} for n in ids])
        sv = supervise("fault_app", "--processes", "1", "--timeout-grace", "0.5", env=env)
        kill_at_markers(faults.out, {4: "run"})
        faults.wait_all_ran(ids, 20, "well before their 34.5 s lease ran out")
        wait_for(faults.drained, 15, message="every job settled, none left to its lease")
        ran = faults.ran()
        assert [ran[n] for n in ids] == [1] * 8, ran    # the killed run of 4 recorded nothing
        log = sv.log()
        assert "job msg_id=4 in" in log and "child died; retry" in log, log[-3000:]
        assert "acked 3 job(s) that succeeded in a child that died" in log, log[-3000:]
        assert "put back 4 job(s) a stopped child had fetched but not started" in log, \
            log[-3000:]
        sv.signal(signal.SIGTERM)
        assert sv.wait_exit() == 0
        # The clean stop that follows is no crash, and does not say it was one.
        assert sv.log().count("that succeeded in a child that died") == 1, sv.log()[-3000:]

    @pgmq_only
    def test_a_failed_enqueue_raises_to_the_caller(self, faults):
        conn = psycopg2.connect(faults.dsn)
        _terminate(conn)
        with pytest.raises(psycopg2.OperationalError):
            faults.jobs["Record"].enqueue(conn, {"n": 1})
        conn.close()
        assert faults.rows() == []

    @pgmq_only
    def test_a_batch_enqueue_lands_fully_or_raises(self, faults):
        conn = psycopg2.connect(faults.dsn)
        faults.jobs["Record"].enqueue_batch(conn, [{"n": n} for n in range(500)])
        conn.commit()
        assert len(faults.rows()) == 500                       # all of it
        faults.jobs["Record"].enqueue_batch(conn, [{"n": n} for n in range(500, 1000)])
        _terminate(conn)                                        # the server goes before the commit
        with pytest.raises((psycopg2.OperationalError, psycopg2.InterfaceError)):
            conn.commit()
        conn.close()
        assert len(faults.rows()) == 500                       # none of it, and the caller knows

    @needs_private_pg
    def test_missing_pgmq_exits_4_with_the_hint_and_pgmq_install_installs_it(
            self, supervise, private_pg, tmp_path):
        db = "nopgmq_" + uuid.uuid4().hex[:6]
        admin = psycopg2.connect(private_pg.dsn)
        admin.autocommit = True
        admin.cursor().execute(f"CREATE DATABASE {db}")
        dsn = private_pg.dsn.rsplit("/", 1)[0] + "/" + db
        env = {"JOBRUNNER_PG_DSN": dsn, "TEST_BACKEND": "pgmq", "TEST_QUEUE": "q",
               "TEST_OUT": str(tmp_path / "out")}
        try:
            sv = supervise("fault_app", "--processes", "1", env=env)
            assert sv.wait_exit(20) == 4
            assert "jobrunner pgmq install" in sv.log() and "--pgmq-install" in sv.log()
            sv = supervise("fault_app", "--processes", "1", "--pgmq-install", env=env)
            sv.wait_log("starting", 20)
            sv.signal(signal.SIGTERM)
            assert sv.wait_exit() == 0
            conn = psycopg2.connect(dsn)
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgmq'")
                assert cur.fetchone()[0] == 1
            conn.close()
            with pytest.raises(BackendUnavailable):   # and the check itself, without the flag
                PgmqBackend(Settings(pg_dsn=private_pg.dsn.rsplit("/", 1)[0] + "/template1"),
                            jobrunner.Registry()).check()
        finally:
            admin.cursor().execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            admin.close()

    @pgmq_only
    def test_a_child_whose_lease_ran_out_cannot_settle_the_job_again(self, faults):
        registry = jobrunner.Registry()
        registry.register(faults.jobs["Record"])
        backend = PgmqBackend(Settings(pg_dsn=faults.dsn), registry)
        faults.enqueue("Record", [{"n": 1}])
        late, fresh = backend.consumer([faults.queue], "a"), backend.consumer([faults.queue], "b")
        try:
            (old,) = late.fetch(0)                     # read_ct 1; its child hangs past the lease
            expire_leases(faults.dsn, faults.queue)    # ...which runs out
            (new,) = fresh.fetch(0)                    # read_ct 2: another child runs it now
            assert (old.id, old.attempt, new.attempt) == (new.id, 1, 2)
            error = ErrorInfo(error_class="X", message="late")
            late.bury(old, error)                      # each must do nothing: not its job any more
            late.retry(old, 0, error)
            late.ack(old)
            (row,) = faults.rows()
            assert row["read_ct"] == 2 and not (row["headers"] or {}).get("jobrunner_error")
            assert faults.rows("a") == []
            fresh.ack(new)                             # the current owner settles it
            assert faults.rows() == []
        finally:
            late.close()
            fresh.close()


# -- Sidekiq only ------------------------------------------------------------------------------

class TestSidekiqOnly:
    """Faults of Redis's own: a server down or refusing writes, eviction, old versions."""

    def test_a_failed_enqueue_raises_to_the_caller(self, private_redis, tmp_path):
        faults = SidekiqFaults(private_redis.url, tmp_path)
        private_redis.stop()
        with pytest.raises(redis.ConnectionError):
            faults.jobs["Record"].enqueue(faults.r, {"n": 1})
        with pytest.raises(redis.ConnectionError):
            faults.jobs["Record"].enqueue_batch(faults.r, [{"n": 2}, {"n": 3}])
        private_redis.start()
        assert faults.r.llen(f"queue:{faults.queue}") == 0
        faults.close()

    def test_a_batch_enqueue_lands_fully_or_raises(self, private_redis, tmp_path):
        faults = SidekiqFaults(private_redis.url, tmp_path)
        key = f"queue:{faults.queue}"
        faults.enqueue("Record", [{"n": n} for n in range(1000)])
        assert faults.r.llen(key) == 1000                          # all of it
        # The server refuses writes (maxmemory reached, noeviction): the batch raises, none lands.
        faults.r.config_set("maxmemory", "1")
        with pytest.raises(redis.ResponseError, match="maxmemory"):
            faults.enqueue("Record", [{"n": n} for n in range(1000, 2000)])
        faults.r.config_set("maxmemory", "0")
        assert faults.r.llen(key) == 1000
        faults.close()

    def test_an_evicting_redis_is_warned_about_at_start(self, supervise, private_redis,
                                                        tmp_path):
        faults = SidekiqFaults(private_redis.url, tmp_path)
        faults.r.config_set("maxmemory-policy", "allkeys-lru")
        sv = supervise("fault_app", "--processes", "1", env=faults.env)
        sv.wait_log("maxmemory-policy allkeys-lru", 15)
        assert "set it to noeviction" in sv.log()
        sv.signal(signal.SIGTERM)
        assert sv.wait_exit() == 0
        faults.close()

    def test_redis_older_than_6_2_is_warned_about_for_reliable_fetch(self):
        memory = {"maxmemory_policy": "noeviction"}
        (warning,) = redis_warnings({"redis_version": "6.0.16"}, memory, "reliable", "r")
        assert "older than 6.2" in warning and "LMOVE" in warning and "basic" in warning
        (warning,) = redis_warnings({"redis_version": "5.0.7"}, memory, "basic", "r")
        assert "older than 6.2" in warning and "LMOVE" not in warning
        assert redis_warnings({"redis_version": "6.2.0"}, memory, "reliable", "r") == []
        assert redis_warnings({"redis_version": "7.2.4"}, memory, "reliable", "r") == []

    def test_the_check_reports_the_policy_of_a_real_server(self, private_redis):
        backend = SidekiqBackend(Settings(redis_url=private_redis.url), jobrunner.Registry())
        assert backend.check() == []
        client = redis.Redis.from_url(private_redis.url)
        client.config_set("maxmemory-policy", "volatile-lru")
        (warning,) = backend.check()
        assert "volatile-lru" in warning
        client.close()


# -- hangs and freezes -------------------------------------------------------------------------

def _child_id(faults, pid):
    """The in-flight key of worker ``pid`` on Redis, once it has one."""
    keys = [k for k in faults.r.smembers("jobrunner:inflight") if k.endswith(f":{pid}")]
    return keys[0] if keys else None


def test_a_frozen_idle_child_is_replaced_and_its_jobs_run_uncharged(supervise, faults):
    # Frozen (SIGSTOP) while it waits in a fetch: on Redis the fetch still takes a job into
    # its in-flight list. Killed for silence, it had begun nothing, so with max_retries = 0
    # nothing may end dead: every job runs.
    env = dict(faults.env, FAULT_LONG_FETCH="1")
    sv = supervise("fault_app", "--processes", "1", "--heartbeat-timeout", "2", env=env)
    [frozen] = sv.wait_workers(1, titled="idle")
    if faults.name == "sidekiq":
        wait_for(lambda: _child_id(faults, frozen), 10, message="the child's in-flight list")
    os.kill(frozen, signal.SIGSTOP)
    faults.enqueue("Fragile", [{"n": n} for n in range(4)])
    if faults.name == "sidekiq":
        key = _child_id(faults, frozen)
        wait_for(lambda: faults.r.llen(key) == 1, 5, message="the frozen fetch took a job")
    wait_for(lambda: sv.workers() and frozen not in sv.workers(), 20,
             message="the frozen child replaced")
    faults.wait_all_ran(range(4), 30, "after the frozen child was killed")
    assert faults.dead_jobs() == []
    assert f"child {frozen}: heartbeat" in sv.log()
    wait_for(faults.drained, 15, message="every job settled")
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0


def test_a_recovery_handed_to_a_housekeeper_killed_for_silence_is_not_lost(supervise, faults):
    # The housekeeper freezes; a busy child dies; its recovery request is handed to the frozen
    # housekeeper, which is then killed for silence. The next housekeeper gets the request.
    faults.enqueue("Staged", [{"n": 1, "stage": "run"}])
    sv = supervise("fault_app", "--processes", "1", "--heartbeat-timeout", "2",
                   "--timeout-grace", "0.5", env=faults.env)
    [keeper] = wait_for(lambda: sv.housekeepers() or None, 10, message="a housekeeper")
    marker = f"{faults.out}.1.run"
    wait_for(lambda: os.path.exists(marker), 15, message="job 1 running")
    os.kill(keeper, signal.SIGSTOP)
    with open(marker) as handle:
        os.kill(int(handle.read()), signal.SIGKILL)
    wait_for(lambda: sv.housekeepers() and keeper not in sv.housekeepers(), 20,
             message="the frozen housekeeper replaced")
    faults.wait_all_ran([1], 30, "after its child and then its housekeeper died")
    wait_for(faults.drained, 15, message="every job settled")
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0


@sidekiq_only     # pgmq keeps no in-flight list: a late read's lease just ends
def test_a_late_write_of_a_dead_child_after_its_recovery_is_swept(supervise, faults):
    # After a network hang, a command a killed child had sent can reach Redis after its
    # recovery ran (TCP retransmissions of an orphaned socket): its fetch moves a job into
    # the dead child's in-flight list. The supervisor's own sweep must find it.
    faults.enqueue("Staged", [{"n": 1, "stage": "run"}])
    sv = supervise("fault_app", "--processes", "1", "--timeout-grace", "0.5", env=faults.env)
    marker = f"{faults.out}.1.run"
    wait_for(lambda: os.path.exists(marker), 15, message="job 1 running")
    with open(marker) as handle:
        dead = int(handle.read())
    key = _child_id(faults, dead)
    os.kill(dead, signal.SIGKILL)
    sv.wait_log(f"recovered the jobs of child {key[len('jobrunner:inflight:'):]}", 20)
    # What the late fetch does: a job leaves its queue for the dead child's list.
    late = {"class": "Record", "queue": faults.queue, "args": [{"n": 2}], "retry": 25,
            "jid": uuid.uuid4().hex[:24], "created_at": 1.0, "enqueued_at": 1.0}
    faults.r.lpush(key, json.dumps(late))
    faults.wait_all_ran([1, 2], 30, "after the late write")
    wait_for(faults.drained, 15, message="every job settled")
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0


# -- a server that refuses writes ----------------------------------------------------------------

def test_a_full_redis_is_an_outage_the_supervisor_waits_out(supervise, private_redis, tmp_path):
    # Over maxmemory with noeviction every write fails with OutOfMemoryError: children must
    # back off and retry like on a lost connection, a supervisor started then must come up,
    # and nothing may give up or be lost.
    faults = SidekiqFaults(private_redis.url, tmp_path)
    try:
        ids = list(range(50))
        faults.enqueue("Record", [{"n": n} for n in ids])
        faults.r.config_set("maxmemory", 1)                  # far below what it holds
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            faults.enqueue("Record", [{"n": 999}])           # the caller is told; kept out
        sv = supervise("fault_app", "--processes", "2", env=faults.env)
        full = "command not allowed when used memory"
        wait_for(lambda: sv.log().count(full) >= 3, 30,
                 message="both children and the housekeeper meeting the full server")
        # Long enough for a crash loop to give up: the respawn backoff between its five
        # failures at start, and a few seconds for the children to start and fail.
        crash_loop = sum(min(0.1 * 2 ** k, MAX_RESPAWN_DELAY) for k in range(1, MAX_BOOT_FAILURES))
        with pytest.raises(subprocess.TimeoutExpired):
            sv.cli.proc.wait(crash_loop + 3)
        assert faults.ran() == {}
        assert sv.log().count(full) == 3, "each child and the housekeeper say it once"
        faults.r.config_set("maxmemory", 0)
        faults.wait_all_ran(ids, 30, "once the server has room again")
        wait_for(faults.drained, 15, message="every job settled")
        log = sv.log()
        assert "failed at start" not in log and "giving up" not in log, log[-3000:]
        assert log.count("answers again") == 3, log[-3000:]
        sv.signal(signal.SIGTERM)
        assert sv.wait_exit() == 0
    finally:
        faults.r.config_set("maxmemory", 0)
        faults.close()


def test_a_frozen_supervisor_wakes_without_killing_its_children(supervise, faults):
    # The supervisor and its children frozen together (SIGSTOP to the group, as a paused VM
    # does it): on SIGCONT the clocks have jumped, and nobody beat meanwhile. That is the
    # supervisor's own absence, not its children's silence.
    sv = supervise("fault_app", "--processes", "2", "--heartbeat-timeout", "2", env=faults.env)
    workers = sv.wait_workers(2, titled="idle")
    keepers = wait_for(lambda: sv.housekeepers() or None, 10, message="a housekeeper")
    os.killpg(sv.pid, signal.SIGSTOP)
    try:
        time.sleep(5.0)          # the fault itself: frozen for longer than the heartbeat limit
    finally:
        os.killpg(sv.pid, signal.SIGCONT)
    faults.enqueue("Record", [{"n": n} for n in range(6)])
    faults.wait_all_ran(range(6), 20, "after the supervisor woke")
    assert "killing" not in sv.log(), sv.log()[-3000:]
    assert sv.workers() == workers and sv.housekeepers() == keepers
    assert "the supervisor did not run for" in sv.log()
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0

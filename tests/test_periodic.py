"""Periodic jobs against real Postgres and Redis: one job per tick across supervisors.

The first tests drive the backend schedulers in-process (claims, catch-up, cleanup, listing);
the slow ones run two and three real supervisors on 1-second schedules and read back which
tick every run belonged to (pgmq's archive, Sidekiq's dead set: see ``apps/periodic_app.py``).
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import psycopg2
import pytest
import redis

import jobrunner
from jobrunner import schedule as periodic
from jobrunner.backends.pgmq import schedules as pgmq_periodic
from jobrunner.backends.sidekiq import schedules as sidekiq_periodic
from jobrunner.backends.pgmq.schedules import PgmqPeriodic
from jobrunner.backends.sidekiq.schedules import SidekiqPeriodic
from jobrunner.process.housekeeper import TICK_SECONDS
from jobrunner.schedule import Schedule, latest_tick, schedule_key
from helpers import CliProcess, read_lines, wait_for

EVERY_SECOND = "* * * * * *"


def autocommit(dsn):
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    return conn


def make_schedules(enqueuer, queue, *argss):
    """Every-second schedules of one worker, one per args value."""
    worker = type("Tick", (jobrunner.Worker,), {"enqueuer": enqueuer, "queue": queue,
                                                "handle": lambda self, args: None})
    registry = jobrunner.Registry()
    return [Schedule.from_entry(registry.register_periodic(worker, cron=EVERY_SECOND,
                                                           args=args))
            for args in argss]


def forget_pg_schedules(dsn, keys):
    conn = autocommit(dsn)
    pgmq_periodic.ensure_tables(conn)      # a test that failed early may not have made them
    with conn.cursor() as cur:
        cur.execute("DELETE FROM jobrunner.periodic_ticks WHERE schedule_key = ANY(%s)",
                    (list(keys),))
        cur.execute("DELETE FROM jobrunner.periodic_schedules WHERE schedule_key = ANY(%s)",
                    (list(keys),))
    conn.close()


def queued_bodies(dsn, queue):
    conn = autocommit(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(f'SELECT message FROM pgmq."q_{queue}" ORDER BY msg_id')
            return [row[0] for row in cur.fetchall()]
    except psycopg2.errors.UndefinedTable:
        return []      # nothing was ever sent to it
    finally:
        conn.close()


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def pg_schedules(pg_dsn, queue_name):
    """Two every-second pgmq schedules on a fresh queue; their rows are deleted after."""
    schedules = make_schedules(jobrunner.PgEnqueuer, queue_name,
                               {"run": uuid.uuid4().hex, "n": 1}, {"run": uuid.uuid4().hex})
    conns = []
    yield schedules, conns
    for conn in conns:
        conn.close()
    forget_pg_schedules(pg_dsn, [s.key for s in schedules])


# -- pgmq, in-process ---------------------------------------------------------------------

def test_pg_claims_each_tick_once_across_concurrent_supervisors(pg_dsn, queue_name,
                                                                pg_schedules):
    schedules, conns = pg_schedules
    schedule = schedules[0]
    conns += [autocommit(pg_dsn) for _ in range(4)]
    pgmq_periodic.ensure_tables(conns[0])
    with conns[0].cursor() as cur:   # as the consumers do at start
        cur.execute("SELECT pgmq.create(%s)", (queue_name,))
    base = int(time.time())
    won = []

    def supervisor(conn):
        for tick in range(base, base + 20):
            if pgmq_periodic.claim(conn, schedule, tick):
                won.append(tick)

    threads = [threading.Thread(target=supervisor, args=(conn,)) for conn in conns]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won) == list(range(base, base + 20))
    bodies = queued_bodies(pg_dsn, queue_name)
    assert sorted(b["metadata"]["periodic"]["tick"] for b in bodies) == sorted(won)
    assert {b["metadata"]["worker_name"] for b in bodies} == {"Tick"}
    assert all(b["args"] == schedule.args for b in bodies)


def test_pg_a_claim_whose_send_fails_is_rolled_back(pg_dsn, queue_name, pg_schedules,
                                                    monkeypatch):
    schedules, conns = pg_schedules
    conn = autocommit(pg_dsn)
    conns.append(conn)
    pgmq_periodic.ensure_tables(conn)
    tick = int(time.time())

    def broken_send(*args):
        raise psycopg2.errors.RaiseException("send failed")

    monkeypatch.setattr(pgmq_periodic, "send", broken_send)
    with pytest.raises(psycopg2.Error):
        pgmq_periodic.claim(conn, schedules[0], tick)
    assert conn.autocommit, "the housekeeper's connection must stay in autocommit mode"
    monkeypatch.undo()
    assert pgmq_periodic.claim(conn, schedules[0], tick), "the tick is still free"
    assert len(queued_bodies(pg_dsn, queue_name)) == 1


def test_pg_a_restart_after_downtime_runs_the_missed_tick_once(pg_dsn, queue_name,
                                                               pg_schedules):
    schedules, conns = pg_schedules
    conns += [autocommit(pg_dsn) for _ in range(2)]
    first = PgmqPeriodic(conns[0], schedules)
    first.tick()        # registers the schedules; their first tick is still to come
    assert queued_bodies(pg_dsn, queue_name) == []
    with conns[0].cursor() as cur:   # as if they had been registered an hour ago
        cur.execute("UPDATE jobrunner.periodic_schedules SET first_seen = now() - interval "
                    "'1 hour' WHERE schedule_key = ANY(%s)", ([s.key for s in schedules],))
    now = time.time() + 30          # ... and every supervisor had been down for 30 s
    for conn in conns:              # two supervisors start
        PgmqPeriodic(conn, schedules, clock=Clock(now)).tick()
    ticks = sorted((b["args"].get("n", 0), b["metadata"]["periodic"]["tick"])
                   for b in queued_bodies(pg_dsn, queue_name))
    latest = int(latest_tick(EVERY_SECOND, now))
    assert ticks == [(0, latest), (1, latest)], "one job per schedule, for the latest tick"


def test_pg_stale_schedules_are_forgotten_after_the_grace(pg_dsn, pg_schedules):
    (kept, removed), conns = pg_schedules
    conn = autocommit(pg_dsn)
    conns.append(conn)
    PgmqPeriodic(conn, [kept, removed]).tick()          # an old deploy had both
    listed = [s for s in pgmq_periodic.list_schedules(conn)
              if s["args"] in (kept.args, removed.args)]
    assert len(listed) == 2
    with conn.cursor() as cur:
        cur.execute("UPDATE jobrunner.periodic_schedules SET seen_at = now() - "
                    "make_interval(secs => %s) WHERE schedule_key = %s",
                    (periodic.STALE_GRACE + 1, removed.key))
    PgmqPeriodic(conn, [kept]).tick()                   # the new deploy has one
    listed = [s for s in pgmq_periodic.list_schedules(conn)
              if s["args"] in (kept.args, removed.args)]
    assert [s["args"] for s in listed] == [kept.args]


def test_pg_old_claims_are_pruned_only_past_the_retention(pg_dsn, pg_schedules):
    (schedule, _), conns = pg_schedules
    conn = autocommit(pg_dsn)
    conns.append(conn)
    pgmq_periodic.ensure_tables(conn)
    now = int(time.time())
    old, recent = now - periodic.CLAIM_RETENTION - 60, now - periodic.CLAIM_RETENTION + 60
    with conn.cursor() as cur:
        for tick in (old, recent):
            cur.execute(pgmq_periodic.CLAIM, (schedule.key, tick))
    assert periodic.CLAIM_RETENTION > periodic.CATCH_UP_WINDOW
    pgmq_periodic.prune(conn)
    with conn.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM tick)::bigint FROM jobrunner.periodic_ticks "
                    "WHERE schedule_key = %s", (schedule.key,))
        assert [row[0] for row in cur.fetchall()] == [recent]


def test_pg_list_schedules_gives_next_and_last_run(pg_dsn, pg_conn, pg_schedules):
    (schedule, _), conns = pg_schedules
    conn = autocommit(pg_dsn)
    conns.append(conn)
    scheduler = PgmqPeriodic(conn, [schedule])
    scheduler.tick()
    wait_for(lambda: (scheduler.tick() or True) and any(
        s["last_run"] for s in pgmq_periodic.list_schedules(pg_conn) if s["args"] == schedule.args),
        timeout=5, message="a claimed tick")
    [entry] = [s for s in pgmq_periodic.list_schedules(pg_conn) if s["args"] == schedule.args]
    assert set(entry) == {"key", "worker", "cron", "args", "timezone", "queue", "next_run",
                          "last_run"}
    assert (entry["key"], entry["worker"], entry["cron"], entry["timezone"], entry["queue"]) == (
        schedule.key, "Tick", EVERY_SECOND, "UTC", schedule.worker.queue)
    assert entry["last_run"] < entry["next_run"]
    assert entry["next_run"].timestamp() > time.time() - 1


def test_jobrunner_stats_lists_schedules_with_their_next_run(pg_dsn, pg_schedules):
    (schedule, _), conns = pg_schedules
    conn = autocommit(pg_dsn)
    conns.append(conn)
    PgmqPeriodic(conn, [schedule]).tick()
    env = dict(os.environ, JOBRUNNER_PG_DSN=pg_dsn)
    result = subprocess.run([sys.executable, "-m", "jobrunner", "stats", "--json",
                             "--backend", "pgmq"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    listed = [s for s in json.loads(result.stdout)["backends"]["pgmq"]["schedules"]
              if s["args"] == schedule.args]
    assert [(s["worker"], s["cron"]) for s in listed] == [("Tick", EVERY_SECOND)]
    assert listed[0]["next_run"] > time.time() - 1
    text = subprocess.run([sys.executable, "-m", "jobrunner", "stats", "--backend", "pgmq"],
                          env=env, capture_output=True, text=True, timeout=60).stdout
    [line] = [row for row in text.splitlines() if schedule.args["run"] in row]
    # An every-second schedule is due again within a second: on a loaded machine the listing
    # may come after that, and then says "now" rather than "in 0s".
    assert line.startswith("pgmq Tick") and EVERY_SECOND in line
    assert " in " in line or " now " in line, line


# -- Redis, in-process --------------------------------------------------------------------

def redis_client(url):
    return redis.Redis.from_url(url, decode_responses=True)


def test_redis_claims_each_tick_once_and_pushes_a_sidekiq_job(redis_url):
    schedules = make_schedules(jobrunner.SidekiqEnqueuer, "cron", {"k": 1})
    clients = [redis_client(redis_url) for _ in range(3)]
    now = time.time()
    # Registered a while ago: a new schedule never fires for a tick from before it existed.
    SidekiqPeriodic(clients[0], schedules, clock=Clock(now - 100)).tick()
    assert clients[0].llen("queue:cron") == 0
    for client in clients:                      # three supervisors start at the same moment
        SidekiqPeriodic(client, schedules, clock=Clock(now)).tick()
    raw = clients[0].lrange("queue:cron", 0, -1)
    assert len(raw) == 1
    job = json.loads(raw[0])
    assert job["class"] == "Tick" and job["args"] == [{"k": 1}] and job["queue"] == "cron"
    assert job["retry"] == 25 and len(job["jid"]) == 24 and job["enqueued_at"] == now
    assert job["periodic"] == {"schedule": schedules[0].key, "cron": EVERY_SECOND,
                               "tick": int(latest_tick(EVERY_SECOND, now))}
    assert clients[0].sismember("queues", "cron")
    for client in clients:
        client.close()


def test_redis_run_schedule_pushes_what_a_tick_pushes_and_a_stub_keeps_rubys_retry(redis_url):
    from jobrunner.backends.sidekiq.inspector import SidekiqInspector
    ours = make_schedules(jobrunner.SidekiqEnqueuer, "cron_now", {"k": 2})[0]
    stub = type("Ruby::Mailer", (jobrunner.Worker,), {"enqueuer": jobrunner.SidekiqEnqueuer,
                                                      "queue": "cron_now", "name": "Ruby::Mailer"})
    registry = jobrunner.Registry()
    ruby = Schedule.from_entry(registry.register_periodic(stub, cron="0 0 1 1 *",
                                                          args={"to": 1}))
    client = redis_client(redis_url)
    SidekiqPeriodic(client, [ours, ruby]).refresh(time.time())
    inspector = SidekiqInspector(client, health=None)
    jids = [inspector.run_schedule(s.key) for s in (ours, ruby)]
    pushed = [json.loads(raw) for raw in reversed(client.lrange("queue:cron_now", 0, -1))]
    assert [job["jid"] for job in pushed] == jids
    assert [(job["class"], job["args"], job.get("retry")) for job in pushed] == [
        ("Tick", [{"k": 2}], 25), ("Ruby::Mailer", [{"to": 1}], None)]
    assert "retry" not in pushed[1]
    client.close()


def test_redis_regular_passes_push_one_job_per_tick(redis_url):
    schedules = make_schedules(jobrunner.SidekiqEnqueuer, "cron", {"k": 1})
    clock = Clock(float(int(time.time())) + 0.5)
    client = redis_client(redis_url)
    scheduler = SidekiqPeriodic(client, schedules, clock=clock)
    scheduler.tick()                            # first pass: the schedule is new, no catch-up
    for step in (1.01, 0.99, 1.02, 3.0):        # housekeeper jitter, then a slow pass
        clock.now += step
        scheduler.tick()
    ticks = [json.loads(r)["periodic"]["tick"] for r in client.lrange("queue:cron", 0, -1)]
    first = int(clock.now - 6.52) + 1
    assert sorted(ticks) == list(range(first, first + 6))
    client.close()


def test_redis_stale_schedules_are_forgotten_and_claims_expire(redis_url):
    kept, removed = make_schedules(jobrunner.SidekiqEnqueuer, "cron", {"k": 1}, {"k": 2})
    client = redis_client(redis_url)
    now = time.time()
    SidekiqPeriodic(client, [kept, removed], clock=Clock(now)).tick()
    assert {s["args"]["k"] for s in sidekiq_periodic.list_schedules(client)} == {1, 2}
    later = now + periodic.STALE_GRACE + 1
    SidekiqPeriodic(client, [kept], clock=Clock(later)).tick()
    ttl = client.ttl(sidekiq_periodic.ticks_key(kept.key))
    assert periodic.CATCH_UP_WINDOW < ttl <= periodic.CLAIM_RETENTION
    listed = sidekiq_periodic.list_schedules(client, now=later)
    assert [s["args"] for s in listed] == [{"k": 1}]
    [entry] = listed
    assert entry["last_run"].timestamp() == int(latest_tick(EVERY_SECOND, later))
    assert entry["next_run"].timestamp() == entry["last_run"].timestamp() + 1
    client.close()


def test_each_backend_lists_schedules_on_its_own_connection(redis_url, pg_conn):
    client = redis.Redis.from_url(redis_url)      # bytes replies work too
    assert sidekiq_periodic.list_schedules(client) == []
    assert isinstance(pgmq_periodic.list_schedules(pg_conn), list)
    client.close()


# -- real supervisors ---------------------------------------------------------------------

class Fleet:
    """Supervisors running ``apps.periodic_app`` against one Postgres and one Redis."""

    def __init__(self, pg_dsn, redis_url, tmp_path):
        self.pg_dsn = pg_dsn
        self.redis_url = redis_url
        self.tmp_path = tmp_path
        self.queue = "p_" + uuid.uuid4().hex[:12]
        self.out = str(tmp_path / "runs.txt")
        self.run = uuid.uuid4().hex
        self.procs = []

    def start(self, count, variant="full"):
        env = {"TEST_QUEUE": self.queue, "TEST_OUT": self.out, "TEST_RUN": self.run,
               "TEST_VARIANT": variant, "JOBRUNNER_PROCESSES": "1",
               "JOBRUNNER_PG_DSN": self.pg_dsn, "JOBRUNNER_REDIS_URL": self.redis_url}
        started = [CliProcess(["run", "apps.periodic_app:registry"], env,
                              str(self.tmp_path / f"supervisor{len(self.procs) + i}.log"))
                   for i in range(count)]
        self.procs += started
        return started

    def stop(self, procs=None):
        for proc in procs or self.procs:
            proc.signal(signal.SIGTERM)
        for proc in procs or self.procs:
            assert proc.wait() == 0, proc.output()[-3000:]

    def kill(self, proc):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def runs(self, backend, name, after=0.0):
        """Recorded run times of schedule ``name`` on ``backend``."""
        times = []
        for line in read_lines(self.out):
            kind, which, at = line.split()
            if kind == backend and which == name and float(at) >= after:
                times.append(float(at))
        return times

    def ticks(self, backend, name):
        """The tick of every finished job of ``name``: pgmq's archive, Sidekiq's dead set."""
        if backend == "pgmq":
            conn = autocommit(self.pg_dsn)
            with conn.cursor() as cur:
                cur.execute(f'SELECT message FROM pgmq."a_{self.queue}"')
                jobs = [row[0] for row in cur.fetchall()]
            conn.close()
            return sorted(j["metadata"]["periodic"]["tick"] for j in jobs
                          if j["args"]["name"] == name)
        jobs = [j for _, j in self.dead_jobs()]
        assert all(j["error_class"] == "ValueError" for j in jobs)
        return sorted(j["periodic"]["tick"] for j in jobs if j["args"][0]["name"] == name)

    def dead_jobs(self):
        """(raw, job) of this fleet's jobs in Sidekiq's dead set."""
        client = redis_client(self.redis_url)
        raws = client.zrange("dead", 0, -1)
        client.close()
        jobs = [(raw, json.loads(raw)) for raw in raws]
        return [(raw, job) for raw, job in jobs if job.get("queue") == self.queue]

    def close(self):
        for proc in self.procs:
            if proc.proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.stop()
        conn = autocommit(self.pg_dsn)
        with conn.cursor() as cur:
            cur.execute("SELECT pgmq.drop_queue(%s)", (self.queue,))
        conn.close()
        keys = [schedule_key(worker, EVERY_SECOND, {"run": self.run, "name": name})
                for worker in ("PgTick", "RedisTick") for name in "ab"]
        forget_pg_schedules(self.pg_dsn, keys)
        self._forget_redis(keys)

    def _forget_redis(self, keys):
        client = redis_client(self.redis_url)
        pipe = client.pipeline(transaction=False)
        for raw, _ in self.dead_jobs():
            pipe.zrem("dead", raw)
        pipe.delete(f"queue:{self.queue}", *[sidekiq_periodic.ticks_key(k) for k in keys])
        pipe.srem("queues", self.queue)
        pipe.hdel(sidekiq_periodic.SCHEDULES, *keys)
        pipe.zrem(sidekiq_periodic.SEEN, *keys)
        pipe.execute()
        client.close()


@pytest.fixture
def fleet(pg_dsn, redis_url, tmp_path):
    fleet = Fleet(pg_dsn, redis_url, tmp_path)
    yield fleet
    fleet.close()


def assert_one_job_per_tick(fleet, backend, name, lost=0, downtime=None):
    """No tick ran twice, the recorded runs match the finished jobs, no tick was skipped.

    ``lost``: jobs a SIGKILLed child may have been running (recorded, never finished).
    ``downtime``: (start, end) when no supervisor ran: only the latest missed tick runs.
    """
    ticks = fleet.ticks(backend, name)
    runs = fleet.runs(backend, name)
    assert len(ticks) == len(set(ticks)), f"{backend} {name}: a tick ran twice: {ticks}"
    assert len(ticks) <= len(runs) <= len(ticks) + lost
    skipped = set(range(ticks[0], ticks[-1] + 1)) - set(ticks)
    if downtime is not None:
        skipped -= {t for t in skipped if downtime[0] <= t <= downtime[1]}
    assert len(skipped) <= lost, f"{backend} {name}: ticks never ran: {sorted(skipped)}"
    return ticks


@pytest.mark.slow
def test_three_supervisors_fire_once_per_tick_and_survive_a_kill(fleet):
    procs = fleet.start(3)
    wait_for(lambda: all(len(fleet.runs(b, "a")) >= 4 for b in ("pgmq", "sidekiq")),
             timeout=20, message="4 runs per backend")
    fleet.kill(procs[0])
    killed_at = time.time()
    wait_for(lambda: all(len(fleet.runs(b, "a", after=killed_at)) >= 5
                         for b in ("pgmq", "sidekiq")),
             timeout=15, message="5 runs per backend after the kill")
    fleet.stop(procs[1:])
    for backend in ("pgmq", "sidekiq"):
        for name in "ab":
            ticks = assert_one_job_per_tick(fleet, backend, name, lost=1)
            # about one run per second: the ticks cover the time the schedules ran
            span = fleet.runs(backend, name)[-1] - fleet.runs(backend, name)[0]
            assert abs(len(ticks) - span) <= 3, (backend, name, len(ticks), span)


@pytest.mark.slow
def test_a_removed_schedule_stops_after_a_redeploy_of_two_supervisors(fleet, pg_conn):
    fleet.start(2)
    wait_for(lambda: all(len(fleet.runs(b, "b")) >= 3 for b in ("pgmq", "sidekiq")),
             timeout=20, message="3 runs of schedule b per backend")
    listed = [s for s in pgmq_periodic.list_schedules(pg_conn) if s["args"].get("run") == fleet.run]
    assert sorted(s["args"]["name"] for s in listed) == ["a", "b"]
    assert all(s["last_run"] is not None and s["next_run"] for s in listed)
    # A housekeeper claims the ticks due since its previous pass, once a second, and makes no
    # pass once the stop has begun: a tick that fell due up to a pass before the TERM may be
    # left to the downtime (after which only the latest missed tick runs). Under load, the
    # pass before the stop can be a whole second late.
    stopping_at = time.time() - 2 * TICK_SECONDS
    fleet.stop()
    redeployed_at = time.time()
    fleet.start(2, variant="without-b")
    wait_for(lambda: all(len(fleet.runs(b, "a", after=redeployed_at)) >= 4
                         for b in ("pgmq", "sidekiq")),
             timeout=20, message="4 runs of schedule a per backend after the redeploy")
    fleet.stop()
    for backend in ("pgmq", "sidekiq"):
        first_after = min(fleet.runs(backend, "a", after=redeployed_at))
        assert_one_job_per_tick(fleet, backend, "a", downtime=(stopping_at, first_after))
        ticks_b = fleet.ticks(backend, "b")
        assert ticks_b and max(ticks_b) < redeployed_at, f"{backend}: b fired after removal"


@pytest.mark.parametrize("backend", ["pgmq", "sidekiq"])
def test_a_schedule_that_breaks_at_run_time_never_stops_the_others(backend, request, caplog):
    # Registration refuses a cron that never fires; one that breaks later anyway (here put in
    # past the check) is skipped with one error, and every other schedule keeps firing.
    import attr
    if backend == "pgmq":
        queue, dsn = request.getfixturevalue("queue_name"), request.getfixturevalue("pg_dsn")
        [good] = make_schedules(jobrunner.PgEnqueuer, queue, {"run": uuid.uuid4().hex})
        conn = autocommit(dsn)
        with conn.cursor() as cur:
            cur.execute("SELECT pgmq.create(%s)", (queue,))
        make = lambda schedules, clock: PgmqPeriodic(conn, schedules, clock=clock)  # noqa: E731
        fired = lambda: len(queued_bodies(dsn, queue))  # noqa: E731
    else:
        queue = "cron_" + uuid.uuid4().hex[:8]
        [good] = make_schedules(jobrunner.SidekiqEnqueuer, queue, {"k": 1})
        conn = redis_client(request.getfixturevalue("redis_url"))
        make = lambda schedules, clock: SidekiqPeriodic(conn, schedules, clock=clock)  # noqa: E731
        fired = lambda: conn.llen(f"queue:{queue}")  # noqa: E731
    broken = attr.evolve(good, cron="0 0 30 2 *", key=good.key + "-broken")
    clock = Clock(float(int(time.time())) + 0.5)
    scheduler = make([broken, good], clock)
    try:
        with caplog.at_level("ERROR", logger="jobrunner.periodic"):
            for _ in range(4):
                scheduler.tick()
                clock.now += 1.0
        assert fired() == 3                      # the first pass only starts the schedule
        errors = [r for r in caplog.records if "cannot compute its ticks" in r.getMessage()]
        assert len(errors) == 1, "said once, not every pass"
    finally:
        if backend == "pgmq":
            forget_pg_schedules(dsn, [good.key, broken.key])
        conn.close()


def test_register_periodic_refuses_a_cron_that_never_fires():
    worker = type("Never", (jobrunner.Worker,), {"enqueuer": jobrunner.SidekiqEnqueuer,
                                                 "handle": lambda self, args: None})
    with pytest.raises(jobrunner.ConfigError, match="never fires"):
        jobrunner.Registry().register_periodic(worker, cron="0 0 30 2 *")

"""Three hosts share one server; one is cut off mid-load: the others take over its jobs.

Each supervisor runs in its own network namespace (``netns_support.py``) and reaches a private
Redis or Postgres over a bridge. Host A's link is cut while it runs jobs, without an error on
either side, as a partition does. Checked: no job is lost; A's in-flight jobs run on B or C
within the bound the lease (pgmq) or the heartbeat (Redis) sets; the periodic job still runs
once per tick; and when the link comes back, A serves again and the only jobs that ran twice
are those A had not settled when it was cut. The bounds are those of ``apps/netns_app.py``'s
short timings; ``NETNS_DEFAULT_TIMINGS=1`` runs the same test with the defaults, to measure them.
"""

import json
import os
import time
import uuid

import psycopg2
import pytest
import redis

import jobrunner
from helpers import PrivatePostgres, PrivateRedis, wait_for
from supervisor_support import supervise  # noqa: F401  (a fixture)
from netns_support import (SERVER_ADDRESS, HostNetwork, in_namespace, serve_postgres_on_bridge,
                           serve_redis_on_bridge, unavailable_reason)

pytestmark = pytest.mark.slow

DEFAULT_TIMINGS = os.environ.get("NETNS_DEFAULT_TIMINGS") == "1"
HOSTS = "abc"
CUT = 0                      # host A
JOBS, LATER_JOBS = 60, 30
#: Worker timeout and grace of the app: a pgmq lease is timeout + grace + margin.
TIMEOUT, GRACE = 3, 1
#: Seconds within which the other hosts restart what A was running when it was cut.
RECOVERY_BOUND = {
    # the lease (3 + 1 + margin) from the read, which came before the cut, plus a fetch
    "pgmq": TIMEOUT + GRACE + (30 if DEFAULT_TIMINGS else 1) + 2.0,
    # the heartbeat's TTL after A's last beat, then two orphan scans in a row, then a fetch
    "sidekiq": (60 + 2 * 30 + 5 if DEFAULT_TIMINGS else 3 + 2 * 1.0 + 0.5) + 2.0,
}
#: Seconds after its end during which a finished job's ack may still wait for the child's next
#: fetch (acks ride on it): such a job counts as not yet settled at the cut.
ACK_SLACK = 1.0


def _require_hosts():
    reason = unavailable_reason() or (None if PrivatePostgres.available()
                                      else "a private Postgres needs root and initdb")
    if reason:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(reason)


@pytest.fixture(scope="module")
def network():
    _require_hosts()
    made = HostNetwork(len(HOSTS)).create()
    yield made
    made.destroy()


@pytest.fixture(params=["pgmq", "sidekiq"])
def backend(request, network, tmp_path_factory):
    """(name, env for the hosts' supervisors, what the test itself connects to)."""
    directory = tmp_path_factory.mktemp("cut-" + request.param)
    if request.param == "pgmq":
        server = PrivatePostgres.in_new_folder("jr-cut-").init()
        serve_postgres_on_bridge(server)
        on_bridge = f"postgresql://postgres@{SERVER_ADDRESS}:{server.port}/postgres"
        yield "pgmq", {"JOBRUNNER_PG_DSN": on_bridge}, server.dsn, server.port
        server.destroy()
    else:
        server = PrivateRedis(directory / "redis").start()
        serve_redis_on_bridge(server.url)
        on_bridge = f"redis://{SERVER_ADDRESS}:{server.port}/0"
        yield "sidekiq", {"JOBRUNNER_REDIS_URL": on_bridge}, server.url, server.port
        server.stop()


class Runs:
    """What the jobs recorded, from every host's output file."""

    def __init__(self, supervisors):
        self.supervisors = supervisors

    def rows(self, kind):
        """(n, host, time) of every ``kind`` line ("start" or "end")."""
        return [(int(r[1]), r[2], float(r[3])) for sv in self.supervisors
                for r in sv.lines(kind)]

    def ended(self):
        return {n for n, _, _ in self.rows("end")}

    def settled(self, cut_host, cut_at):
        """Jobs that ended where their end could reach the server: not on the cut host after
        the cut (its ack could not get through)."""
        return {n for n, host, at in self.rows("end") if host != cut_host or at < cut_at}

    def starts_by_job(self):
        starts = {}
        for n, host, at in sorted(self.rows("start"), key=lambda row: row[2]):
            starts.setdefault(n, []).append((host, at))
        return starts


def enqueue(name, client, numbers):
    sender = type("Work", (jobrunner.Worker,), {
        "enqueuer": jobrunner.SidekiqEnqueuer if name == "sidekiq" else jobrunner.PgEnqueuer,
        "queue": client["queue"], "handle": lambda self, args: None})
    sender.enqueue_batch(client["conn"], [{"n": n, "seconds": 0.3 + (n % 8) * 0.1}
                                          for n in numbers])


def read_ticks(name, client):
    """The tick of every run of the periodic job: pgmq's archive, Sidekiq's dead set."""
    if name == "pgmq":
        with client["conn"].cursor() as cur:
            cur.execute(f'SELECT message FROM pgmq."a_{client["queue"]}"')
            bodies = [row[0] for row in cur.fetchall()]
        return [b["metadata"]["periodic"]["tick"] for b in bodies]
    bodies = [json.loads(raw) for raw in client["conn"].zrange("dead", 0, -1)]
    return [b["periodic"]["tick"] for b in bodies if b.get("queue") == client["queue"]]


def test_a_cut_off_host_loses_nothing_and_runs_nothing_twice_that_had_finished(
        backend, network, supervise):
    name, server_env, direct, port = backend
    queue = "cut_" + uuid.uuid4().hex[:8]
    if name == "pgmq":
        conn = psycopg2.connect(direct)
        conn.autocommit = True
    else:
        conn = redis.Redis.from_url(direct, decode_responses=True)
    client = {"conn": conn, "queue": queue}
    env = dict(server_env, TEST_BACKEND=name, TEST_QUEUE=queue, TEST_RUN=queue,
               JOBRUNNER_LOG_LEVEL="INFO", **({} if DEFAULT_TIMINGS else {"NETNS_FAST": "1"}))
    supervisors = [supervise("netns_app", "--processes", "2", "--timeout-grace", str(GRACE),
                             env=dict(env, TEST_HOST=host), name=f"host-{host}",
                             wrapper=in_namespace(network.hosts[n]))
                   for n, host in enumerate(HOSTS)]
    for sv in supervisors:
        sv.wait_workers(2, timeout=20)
    runs = Runs(supervisors)
    enqueue(name, client, range(JOBS))

    # Cut A while it runs jobs: its children hold them, leased or in their in-flight lists.
    wait_for(lambda: len([r for r in runs.rows("start") if r[1] == "a"]) >= 3, 20,
             message="host A to run jobs")
    cut_at = time.time()
    network.cut(CUT)
    wait_for(lambda: set(range(JOBS)) <= runs.settled("a", cut_at), 30 + RECOVERY_BOUND[name],
             0.1, message="every job to end where the server could hear of it")
    ticks_during_cut = [t for t in read_ticks(name, client) if t > cut_at + 1]

    network.restore(CUT)
    restored_at = time.time()
    enqueue(name, client, range(JOBS, JOBS + LATER_JOBS))
    wait_for(lambda: set(range(JOBS + LATER_JOBS)) <= runs.ended(), 60, 0.1,
             message="the later jobs to end")
    back = [at for n, host, at in runs.rows("start") if host == "a" and at > restored_at]
    for sv in supervisors:
        sv.signal(15)
    for sv in supervisors:
        assert sv.wait_exit(30) == 0, sv.log()[-3000:]

    starts, ends = runs.starts_by_job(), runs.rows("end")
    ended_on_a = {n: at for n, host, at in ends if host == "a"}
    unsettled_at_cut = {n for n, seen in starts.items() if seen[0][0] == "a"
                        and seen[0][1] < cut_at
                        and ended_on_a.get(n, cut_at) > cut_at - ACK_SLACK}
    ran_twice = {n for n, seen in starts.items() if len(seen) > 1}
    # A job A still ran at the cut cannot have been acked: B or C must have run it again.
    held_at_cut = {n for n in unsettled_at_cut if ended_on_a.get(n, cut_at) >= cut_at}
    recovered_in = [next(at for host, at in starts[n] if host != "a") - cut_at
                    for n in held_at_cut if any(host != "a" for host, _ in starts[n])]
    ticks = read_ticks(name, client)
    print(f"\n{name}: cut A with {len(unsettled_at_cut)} jobs unsettled; recovered within "
          f"{max(recovered_in, default=0):.1f} s (bound {RECOVERY_BOUND[name]:.1f} s); "
          f"ran twice: {sorted(ran_twice)}; A served again "
          f"{(min(back) - restored_at) if back else float('nan'):.1f} s after the link "
          f"returned; {len(ticks)} ticks, {len(ticks_during_cut)} during the cut")

    assert set(range(JOBS + LATER_JOBS)) <= runs.ended(), "a job was lost"
    assert unsettled_at_cut, "A was cut while it held no job: the test proved nothing"
    assert ran_twice <= unsettled_at_cut, (
        f"jobs that had finished before the cut ran again: {sorted(ran_twice - unsettled_at_cut)}")
    assert len(recovered_in) == len(held_at_cut) > 0, (held_at_cut, starts)
    assert max(recovered_in) <= RECOVERY_BOUND[name], recovered_in
    assert len(ticks) == len(set(ticks)), f"a tick ran twice: {sorted(ticks)}"
    assert ticks_during_cut, "the periodic job stopped while one host was cut off"
    assert back, "host A took no job after its link returned"
    conn.close()

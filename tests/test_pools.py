"""Dedicated pools per queue (``--pool critical=2``, ``Settings.pools``, ``JOBRUNNER_POOLS``)."""

import json
import signal
import types
import uuid

import psycopg2
import pytest
import redis

import jobrunner
from helpers import wait_for
from jobrunner import config
from jobrunner.errors import ConfigError
from jobrunner.process.pool import build_pools
from supervisor_support import supervise  # noqa: F401  (a fixture)


def test_pool_specs_parse_from_flags_settings_and_the_environment():
    specs = config.resolve(flags={"pools": ["critical=2", "default,low=3:weighted"]}).pools
    assert [(s.queues, s.size, s.order) for s in specs] == [
        (("critical",), 2, "strict"), (("default", "low"), 3, "weighted")]
    specs = config.resolve(environ={"JOBRUNNER_POOLS": "a=1; b,c=2"}).pools
    assert [(s.queues, s.size) for s in specs] == [(("a",), 1), (("b", "c"), 2)]
    assert config.resolve(environ={}).pools == ()
    for bad in (["a"], ["a=0"], ["a=x"], ["a=1:random"], ["a=1", "a,b=2"], ["=2"]):
        with pytest.raises(ConfigError):
            config.resolve(flags={"pools": bad})


def test_a_queue_given_a_pool_leaves_the_shared_pool():
    registry = types.SimpleNamespace(
        backends=lambda: ["sidekiq", "pgmq"],
        queues=lambda name: {"sidekiq": ["crit", "b", "c"], "pgmq": ["b", "p"]}[name])
    settings = config.resolve({"processes": 4, "pools": ["crit=2", "b,c=3:weighted"]},
                              environ={})
    pools = build_pools(settings, registry, lambda name, s, r: (name, s.queue_order))
    shape = [(p.name, p.queues, p.size, p.backend, p.owner().name) for p in pools]
    assert shape == [
        ("sidekiq[crit]", ["crit"], 2, ("sidekiq", "strict"), "sidekiq[crit]"),
        ("sidekiq[b,c]", ["b", "c"], 3, ("sidekiq", "weighted"), "sidekiq[crit]"),
        ("pgmq", ["p"], 4, ("pgmq", "strict"), "pgmq"),
        ("pgmq[b]", ["b"], 3, ("pgmq", "weighted"), "pgmq")]


def _runs(path):
    try:
        with open(path) as handle:
            return [line.split() for line in handle if line.startswith("ran ")]
    except FileNotFoundError:
        return []


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sidekiq", "pgmq"])
def test_a_dedicated_pool_runs_its_queue_while_the_shared_pool_is_busy(
        supervise, backend, redis_url, pg_dsn, tmp_path):
    queue = "p_" + uuid.uuid4().hex[:8]
    out = str(tmp_path / "runs.out")
    env = {"TEST_BACKEND": backend, "TEST_QUEUE": queue, "FAULT_OUT": out,
           "JOBRUNNER_REDIS_URL": redis_url, "JOBRUNNER_PG_DSN": pg_dsn}
    enqueuer = jobrunner.SidekiqEnqueuer if backend == "sidekiq" else jobrunner.PgEnqueuer
    send = {s: type(f"Job_{s}", (jobrunner.Worker,), {
        "enqueuer": enqueuer, "queue": f"{queue}_{s}", "handle": lambda self, a: None})
        for s in ("crit", "b")}
    conn = redis.Redis.from_url(redis_url) if backend == "sidekiq" else psycopg2.connect(pg_dsn)
    send["b"].enqueue_batch(conn, [{"n": n, "seconds": 1.5} for n in range(4)])
    if backend == "pgmq":
        conn.commit()
    sv = supervise("fault_app_pools", "--processes", "2", "--pool", f"{queue}_crit=1",
                   env=env)
    sv.wait_log("starting", 15)
    line = next(l for l in sv.log().splitlines() if "starting" in l)
    assert f"{backend} x2 [{queue}_b,{queue}_c]" in line
    assert f"{backend}[{queue}_crit] x1 [{queue}_crit]" in line
    sv.wait_workers(3, titled="jobrunner")
    # one per backend, shared; waited for: a title being set reads empty for a moment
    wait_for(lambda: len(sv.housekeepers()) == 1, 10, message="exactly one housekeeper")
    wait_for(lambda: sum("busy" in t for t in sv.children().values()) >= 2, 10,
             message="the shared pool busy")
    send["crit"].enqueue_batch(conn, [{"n": n} for n in range(3)])
    if backend == "pgmq":
        conn.commit()
    # the dedicated child runs them at once, while the shared children are still busy
    wait_for(lambda: len([r for r in _runs(out) if r[1].endswith("_crit")]) == 3, 1.2,
             message="the critical jobs, before the shared pool frees up")
    wait_for(lambda: len(_runs(out)) == 7, 15, message="every job")
    crit_pids = {r[3] for r in _runs(out) if r[1].endswith("_crit")}
    other_pids = {r[3] for r in _runs(out) if not r[1].endswith("_crit")}
    assert len(crit_pids) == 1 and not crit_pids & other_pids
    if backend == "sidekiq":
        r = redis.Redis.from_url(redis_url, decode_responses=True)
        (identity,) = r.smembers("processes")
        info = json.loads(r.hget(identity, "info"))
        assert info["concurrency"] == 3 and set(info["queues"]) >= {f"{queue}_crit",
                                                                    f"{queue}_b"}
        r.close()
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0
    conn.close()
    if backend == "pgmq":
        cleanup = psycopg2.connect(pg_dsn)
        cleanup.autocommit = True
        for suffix in ("crit", "b", "c"):
            cleanup.cursor().execute("SELECT pgmq.drop_queue(%s) FROM pgmq.meta "
                                     "WHERE queue_name = %s", (f"{queue}_{suffix}",) * 2)
        cleanup.close()

"""Runs per minute: the supervisor's counting (``process/history.py``), the snapshot that
carries it, and what each backend's writer stores. What ``Inspector.history`` reads back is
the contract of ``test_history_contract.py``; the real supervisor's counts are checked in
``test_supervisor.py``."""

import json
import logging
import time
import types

import psycopg2
import pytest
import redis

from jobrunner.backends.memory import MemoryStore
from jobrunner.backends.memory.store import HISTORY_SECONDS
from jobrunner.config import Settings
from jobrunner.process.channel import Channel
from jobrunner.process.history import KEEP_MINUTES, ClassCounts, SettledCounts
from jobrunner.process.messages import Done, Dones, JobEntry, Recover, State
from jobrunner.process.pool import ChildRecord, Pool
from jobrunner.process.state import SupervisorState
from jobrunner.process.supervisor import Supervisor

import jobrunner

T0 = 1_700_000_040.0          # the start of a minute


class Clock:
    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now


# -- counting in the supervisor ---------------------------------------------------------------

def test_every_settled_outcome_is_a_run_and_the_failed_ones_are_failures():
    counts = SettledCounts(clock=Clock(T0 + 5))
    for outcome in ("done", "done", "retry", "dead", "discarded", "requeued", "error", None,
                    "bogus", ["done"], {"done": 1}):       # a child's pipe is not trusted
        counts.done("pgmq", outcome)
    assert counts.recent("pgmq") == {T0: (5, 3)}
    assert counts.recent("sidekiq") == {}


def test_counts_are_per_backend_and_minute_and_recent_gives_totals_so_far():
    clock = Clock(T0 + 59.9)
    counts = SettledCounts(clock=clock)
    counts.done("pgmq", "done")
    counts.done("sidekiq", "retry")
    clock.now = T0 + 60
    counts.done("pgmq", "dead")
    assert counts.recent("pgmq") == {T0: (1, 0), T0 + 60: (1, 1)}
    assert counts.recent("pgmq") == {T0: (1, 0), T0 + 60: (1, 1)}     # totals, not increments
    assert counts.recent("sidekiq") == {T0: (1, 1)}
    counts.done("pgmq", "done")
    assert counts.recent("pgmq")[T0 + 60] == (2, 1)


def test_a_minute_is_carried_for_keep_minutes_then_forgotten():
    clock = Clock(T0)
    counts = SettledCounts(clock=clock)
    counts.done("pgmq", "done")
    clock.now = T0 + KEEP_MINUTES * 60 + 59
    assert counts.recent("pgmq") == {T0: (1, 0)}
    clock.now = T0 + (KEEP_MINUTES + 1) * 60
    assert counts.recent("pgmq") == {}


def test_a_child_that_died_running_a_job_counts_one_failed_run():
    counts = SettledCounts(clock=Clock())
    counts.recovering("pgmq", Recover(child_id="c", tokens=[["q", 1, 1]], crashed=True))
    counts.recovering("pgmq", Recover(child_id="c", tokens=[], crashed=True))   # was idle
    counts.recovering("pgmq", Recover(child_id="c", tokens=[["q", 2, 1]], crashed=False))
    assert counts.recent("pgmq") == {T0: (1, 1)}


def test_the_snapshot_carries_settled_through_its_json_line():
    state = SupervisorState(identity="h:1:abc", hostname="h", pid=1, started_at=T0,
                            queues=["q"], concurrency=2, settled={int(T0): (7, 2)})
    line = json.loads(json.dumps(state.as_dict()))
    assert SupervisorState.from_dict(line).settled == {int(T0): (7, 2)}
    del line["settled"]                  # a snapshot from before this field
    assert SupervisorState.from_dict(line).settled == {}


@pytest.fixture
def channels():
    made = []

    def pair():
        ends = Channel.pair()
        made.extend(ends)
        return ends
    yield pair
    for end in made:
        end.close()


def test_each_housekeeper_gets_its_own_backends_counts(channels):
    supervisor = Supervisor(jobrunner.Registry(), settings=Settings(processes=1))
    supervisor.settled = SettledCounts(clock=Clock(T0 + 1))
    keepers = {}
    for name in ("pgmq", "sidekiq"):
        pool = Pool(name=name, backend=types.SimpleNamespace(name=name), queues=["q"], size=1)
        ours, keepers[name] = channels()
        pool.housekeeper = ChildRecord(pid=100 + len(keepers), child_id=f"k:{name}", pool=pool,
                                       channel=ours, kind="housekeeper", ready=True)
        supervisor.pools.append(pool)
    pgmq, sidekiq = supervisor.pools
    dedicated = Pool(name="sidekiq[critical]", backend=types.SimpleNamespace(name="sidekiq"),
                     queues=["critical"], size=1, primary=sidekiq)
    supervisor.pools.append(dedicated)
    worker = ChildRecord(pid=1, child_id="w:1", pool=pgmq, channel=channels()[0], ready=True)
    critical = ChildRecord(pid=2, child_id="w:2", pool=dedicated, channel=channels()[0],
                           ready=True, running=JobEntry(id="j", token={"jid": "j"}))
    pgmq.children[1], dedicated.children[2] = worker, critical
    supervisor.handle_dones(Dones(jobs=[Done(outcome=outcome)
                                        for outcome in ("done", "retry", "requeued")]),
                            worker, 0.0)
    supervisor.handle_dones(Dones(jobs=[Done(outcome="dead")]), critical, 0.0)
    assert (worker.jobs_done, critical.jobs_done) == (3, 1)
    supervisor._child_exited(2, -9)      # killed mid-job: that run counts as failed
    supervisor._send_states()
    for end in (pgmq.housekeeper.channel, sidekiq.housekeeper.channel):
        end.flush()
    sent = {name: [SupervisorState.from_dict(m.state).settled for m in keepers[name].receive()
                   if isinstance(m, State)] for name in keepers}
    assert sent == {"pgmq": [{int(T0): (2, 1)}], "sidekiq": [{int(T0): (2, 2)}]}


# -- the memory store -----------------------------------------------------------------------

def test_the_memory_store_forgets_minutes_past_25_hours_at_its_next_write():
    clock = Clock()
    store = MemoryStore(clock=clock)
    store.record_settled("a", {int(T0): (3, 1)})
    store.record_settled("b", {int(T0): (1, 1)})
    assert store.settled_in([int(T0), int(T0) + 60]) == {int(T0): (4, 2)}
    clock.now = T0 + HISTORY_SECONDS - 1
    store.record_settled("a", {})
    assert store.settled_in([int(T0)]) == {int(T0): (4, 2)}
    clock.now = T0 + HISTORY_SECONDS + 1
    store.record_settled("a", {})
    assert store.settled_in([int(T0)]) == {}


# -- Redis ------------------------------------------------------------------------------------

def test_redis_keeps_one_hash_per_minute_with_a_field_per_supervisor(redis_url):
    from jobrunner.backends.sidekiq.client import make_client
    from jobrunner.backends.sidekiq.history import KEEP_SECONDS, HistoryWriter, history
    client = make_client(redis_url, 5.0)
    try:
        calls = []
        writer = HistoryWriter(client, "host:1:aaa")
        script = writer._script
        writer._script = lambda **kwargs: calls.append(kwargs) or script(**kwargs)
        writer.write({int(T0): (3, 1), int(T0) + 60: (1, 0)})
        writer.write({int(T0): (3, 1), int(T0) + 60: (1, 0)})     # nothing new: no write
        writer.write({int(T0) + 60: (2, 0)})                       # only what changed
        HistoryWriter(client, "host:2:bbb").write({int(T0): (5, 5)})
        assert len(calls) == 2 and len(calls[1]["keys"]) == 1
        key = f"jobrunner:history:{int(T0)}"
        assert client.hgetall(key) == {"host:1:aaa": "3 1", "host:2:bbb": "5 5"}
        assert KEEP_SECONDS - 5 <= client.ttl(key) <= KEEP_SECONDS == 25 * 3600
        assert history(client, 2, now=T0 + 61) == [
            {"minute": int(T0), "processed": 8, "failed": 6},
            {"minute": int(T0) + 60, "processed": 2, "failed": 0}]
    finally:
        client.close()


def test_a_key_of_another_type_is_logged_and_stops_nothing(redis_url, caplog):
    from jobrunner.backends.sidekiq.client import make_client
    from jobrunner.backends.sidekiq.history import HistoryWriter
    client = make_client(redis_url, 5.0)
    try:
        client.set(f"jobrunner:history:{int(T0)}", "not a hash")
        writer = HistoryWriter(client, "host:1:aaa")
        with caplog.at_level(logging.ERROR, logger="jobrunner.sidekiq"):
            writer.write({int(T0): (1, 0)})
            writer.write({int(T0): (1, 0)})          # tried again, logged once a minute
        assert caplog.text.count("cannot write the per-minute history") == 1
        gone = make_client("redis://127.0.0.1:1/0", 1.0)       # nothing listens there
        with pytest.raises(redis.ConnectionError):
            HistoryWriter(gone, "x").write({int(T0): (1, 0)})  # raised: the keeper reconnects
        gone.close()
    finally:
        client.close()


# -- pgmq -------------------------------------------------------------------------------------

def test_pgmq_upserts_one_row_per_minute_and_supervisor_and_prunes_old_ones(pg_dsn):
    from jobrunner.backends.pgmq.connection import connect
    from jobrunner.backends.pgmq.history import HistoryWriter, history
    conn = connect(pg_dsn)
    identity = "test_history:" + str(id(conn))
    first = int(time.time() // 60) * 60 - 120      # kept: within the last 25 hours
    try:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO jobrunner.history (minute, identity, processed, failed) "
                        "VALUES (now() - interval '26 hours', %s, 1, 1)", (identity,))
        writer = HistoryWriter(conn, identity, (psycopg2.OperationalError,))
        upserts = []
        upsert = writer._upsert
        writer._upsert = lambda changed: upserts.append(dict(changed)) or upsert(changed)
        writer.write({first: (3, 1), first + 60: (1, 0)})
        writer.write({first: (3, 1), first + 60: (1, 0)})     # nothing new: no write
        writer.write({first + 60: (2, 0)})                    # only what changed
        assert upserts == [{first: (3, 1), first + 60: (1, 0)}, {first + 60: (2, 0)}]
        with conn.cursor() as cur:
            cur.execute("SELECT extract(epoch FROM minute)::bigint, processed, failed "
                        "FROM jobrunner.history WHERE identity = %s ORDER BY minute",
                        (identity,))
            assert cur.fetchall() == [(first, 3, 1), (first + 60, 2, 0)]  # old row pruned
        entries = history(conn, 2, now=first + 61)
        assert [e["minute"] for e in entries] == [first, first + 60]
        assert entries[0]["processed"] >= 3 and entries[1]["processed"] >= 2
    finally:
        with conn.cursor() as cur:
            cur.execute("DELETE FROM jobrunner.history WHERE identity = %s", (identity,))
        conn.close()


def test_a_pgmq_table_of_another_shape_is_logged_and_stops_nothing(scratch_database, caplog):
    from jobrunner.backends.pgmq.connection import connect
    from jobrunner.backends.pgmq.history import HistoryWriter, history
    conn = connect(scratch_database())
    try:
        assert [(e["processed"], e["failed"]) for e in history(conn, 3)] == [(0, 0)] * 3
        with conn.cursor() as cur:
            cur.execute("CREATE SCHEMA jobrunner; CREATE TABLE jobrunner.history (minute int)")
        writer = HistoryWriter(conn, "h:1:a", (psycopg2.OperationalError,))
        with caplog.at_level(logging.ERROR, logger="jobrunner.pgmq"):
            writer.write({int(T0): (1, 0)})
        assert "cannot write the per-minute history" in caplog.text
    finally:
        conn.close()


def test_the_entries_of_one_dones_message_count_as_each_done_would():
    entries = [Done(worker="A", outcome="done", micros=25000), Done(worker="A", outcome="retry"),
               Done(worker="B", outcome="done", micros="x"), Done(worker=None, outcome="dead"),
               Done(worker="A", outcome="requeued"), Done(worker=7, outcome=["done"])]
    one, each = ClassCounts(clock=Clock(T0 + 1)), ClassCounts(clock=Clock(T0 + 1))
    one.dones("sidekiq", entries)
    for entry in entries:
        each.done("sidekiq", entry.outcome, entry.worker, entry.duration)
    assert one.recent("sidekiq") == each.recent("sidekiq") == {int(T0): (4, 2)}
    assert one.recent_classes("sidekiq") == each.recent_classes("sidekiq")
    a = one.recent_classes("sidekiq")[int(T0)]["A"]
    assert a[:3] == [2, 1, 25] and sum(a[3]) == 1

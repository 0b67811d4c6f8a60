"""The operator commands against a real supervisor: retries, scheduled, job ID, busy, queue
pause|resume|purge, quiet and stop, as a user runs them (`python -m jobrunner ...`).

One supervisor (``apps/ops_app.py``) serves both backends, so `busy` lists it on each; the
tests that act on one backend are parametrised over both.
"""

import json
import os
import signal

import psycopg2
import pytest
import redis

from apps import ops_app
from helpers import wait_for
from supervisor_support import supervise  # noqa: F401 (a fixture)
from test_cli_admin import run_cli

pytestmark = pytest.mark.slow


class Both:
    """The two backends of one test: queues, enqueue connections and the CLI's env."""

    def __init__(self, pg_dsn, redis_url, queue):
        self.queue, self.other = queue, queue + "_other"
        self.env = {"JOBRUNNER_PG_DSN": pg_dsn, "JOBRUNNER_REDIS_URL": redis_url}
        self.pg = psycopg2.connect(pg_dsn)
        self.pg.autocommit = True
        self.redis = redis.Redis.from_url(redis_url)
        self.workers = {w.name: w for w in ops_app.registry.workers()}

    def enqueue(self, backend, name, *args_list, delay=None):
        """Enqueue on ``backend`` ("pgmq"/"sidekiq") with worker ``name`` (Charge, Record,
        Hold, RecordOther); returns the job ids."""
        prefix = "Pg" if backend == "pgmq" else "Redis"
        worker = self.workers[prefix + name]
        # This process imported ops_app without TEST_QUEUE: point the worker at the queue
        # the supervisor serves, under the same name.
        queue = self.other if name == "RecordOther" else self.queue
        worker = type(worker.__name__, (worker,), {"name": worker.name, "queue": queue})
        conn = self.pg if backend == "pgmq" else self.redis
        if delay:
            return [worker.enqueue_in(conn, delay, args) for args in args_list]
        return worker.enqueue_batch(conn, list(args_list))

    def cli(self, *args):
        return run_cli(*args, **self.env)

    def json(self, *args):
        done = self.cli(*args, "--json")
        assert done.returncode in (0, 6), done.stderr
        return json.loads(done.stdout)

    def listed(self, kind):
        """``KIND list --json`` of this test's queue (the pgmq database is shared)."""
        return self.json(kind, "list", "--queue", self.queue)["jobs"]

    def close(self):
        with self.pg.cursor() as cur:
            cur.execute("SELECT pgmq.drop_queue(queue_name) FROM pgmq.list_queues() "
                        "WHERE queue_name = %s", (self.other,))
        self.pg.close()
        self.redis.close()


@pytest.fixture
def both(pg_dsn, redis_url, queue_name):
    made = Both(pg_dsn, redis_url, queue_name)
    yield made
    made.close()


@pytest.fixture
def running(supervise, both):
    """A supervisor serving both backends' queues, one child each."""
    def start(*args):
        env = dict(both.env, TEST_QUEUE=both.queue)
        return supervise("ops_app", "--processes", "1", *args, env=env)
    return start


def only_on(backend, entries):
    return [entry for entry in entries if entry["backend"] == backend]


# -- failures -------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["pgmq", "sidekiq"])
def test_a_failure_is_in_retries_and_job_id_shows_its_traceback(both, running, backend):
    [job_id] = both.enqueue(backend, "Charge", {"n": 1, "card": "4242"})
    sv = running()
    sv.wait_lines("charge", 1)
    listed = wait_for(lambda: only_on(backend, both.listed("retries")),
                      message="the failed job in `retries list`")
    [entry] = listed
    assert (entry["id"], entry["state"], entry["error_class"], entry["error_message"],
            entry["attempts"]) == (job_id, "retrying", "ValueError", "card 4242 declined", 1)
    assert entry["run_at"] - entry["failed_at"] > 3000      # the worker's one-hour backoff

    [found] = both.json("job", job_id)["found"]
    assert found["state"] == "retrying" and found["worker"].endswith("Charge")
    assert found["backtrace"][-1].strip() == 'raise ValueError(f"card {card} declined")'
    assert "card 4242" not in "\n".join(found["backtrace"])     # the message is kept apart
    assert any("ops_app.py" in line and "in charge_card" in line for line in found["backtrace"])
    human = both.cli("job", job_id).stdout
    assert "state:" in human and "retrying" in human and "backtrace:" in human
    assert "in charge_card" in human

    table = both.cli("retries", "list", "--queue", both.queue).stdout.splitlines()
    assert table[0].split()[:3] == ["NEXT", "RUN", "BACKEND"]
    assert any(job_id in line and "ValueError: card 4242 declined" in line for line in table)

    # retry now: it runs again at once, as its second attempt, and fails again
    done = both.json("retries", "retry", job_id)
    assert [e["id"] for e in done["done"]] == [job_id]
    sv.wait_lines("charge", 2)
    wait_for(lambda: [e["attempts"] for e in only_on(backend, both.listed("retries"))] == [2],
             message="the second failure recorded")
    # kill: to dead at once, with its error
    assert [e["id"] for e in both.json("retries", "kill", job_id)["done"]] == [job_id]
    [dead] = only_on(backend, both.listed("dead"))
    assert (dead["id"], dead["error_class"]) == (job_id, "ValueError")
    assert both.json("job", job_id)["found"][0]["state"] == "dead"


@pytest.mark.parametrize("backend", ["pgmq", "sidekiq"])
def test_scheduled_jobs_are_listed_enqueued_now_or_deleted(both, backend):
    first, second = both.enqueue(backend, "Record", {"n": 1}, {"n": 2}, delay=3600)
    listed = only_on(backend, both.listed("scheduled"))
    assert [e["id"] for e in listed] == [first, second]
    assert both.cli("scheduled", "list").stdout.splitlines()[0].split()[:3] == [
        "RUNS", "(UTC)", "IN"]
    assert [e["id"] for e in both.json("scheduled", "enqueue-now", first)["done"]] == [first]
    assert both.json("job", first)["found"][0]["state"] == "waiting"
    done = both.cli("scheduled", "delete", second, "nope-id")
    assert done.returncode == 6 and "not found: nope-id" in done.stdout
    assert both.json("job", second)["found"] == []


# -- what runs ------------------------------------------------------------------------------

def test_busy_lists_the_supervisor_on_both_backends_and_quiet_and_stop_reach_it(
        both, running):
    sv = running()
    hold = sv.out + ".hold"         # ops_app.HOLD in the supervisor: Hold jobs run while it is
    open(hold, "w").close()
    [pg_job] = both.enqueue("pgmq", "Hold", {"n": 1, "what": "pg"})
    [redis_job] = both.enqueue("sidekiq", "Hold", {"n": 2, "what": "redis"})
    sv.wait_lines("start", 2)

    def listed():
        processes = both.json("busy")["processes"]
        mine = [p for p in processes if p["pid"] == sv.pid and p["running"]]
        return mine if len(mine) == 2 else None
    by_backend = {p["backend"]: p for p in wait_for(listed, message="busy on both backends")}
    assert set(by_backend) == {"pgmq", "sidekiq"}
    [pg_run] = by_backend["pgmq"]["running"]
    [redis_run] = by_backend["sidekiq"]["running"]
    assert (pg_run["job_id"], pg_run["worker"], pg_run["args"]) == (
        pg_job, "PgHold", {"n": 1, "what": "pg"})
    assert (redis_run["job_id"], redis_run["worker"], redis_run["args"]) == (
        redis_job, "RedisHold", [{"n": 2, "what": "redis"}])
    for proc in by_backend.values():
        assert proc["queues"] == [both.queue, both.other] and proc["concurrency"] == 1
        assert proc["busy"] == 1 and proc["quiet"] is False
    human = both.cli("busy").stdout
    assert "PgHold" in human and "RedisHold" in human and str(sv.pid) in human
    assert both.json("job", pg_job)["found"][0]["process"] == by_backend["pgmq"]["identity"]

    identity = by_backend["pgmq"]["identity"]
    done = both.cli("quiet", identity)
    assert done.returncode == 0 and "asked pgmq supervisor" in done.stdout, done.stderr
    sv.wait_log("quiet; no new jobs will start")
    wait_for(lambda: all(p["quiet"] for p in both.json("busy")["processes"]
                         if p["pid"] == sv.pid), message="quiet shown on both backends")
    os.unlink(hold)
    assert both.cli("stop", identity).returncode == 0
    assert sv.wait_exit() == 0
    wait_for(lambda: not [p for p in both.json("busy")["processes"] if p["pid"] == sv.pid],
             message="the stopped supervisor gone from busy")
    missing = both.cli("stop", identity)
    assert missing.returncode == 6 and "no live supervisor" in missing.stderr


# -- queues ---------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["pgmq", "sidekiq"])
def test_a_paused_queue_holds_its_jobs_while_another_drains(both, running, backend):
    # Paused before the supervisor starts, so its children's first read sees it; how soon a
    # running child sees a pause is the contract's (test_operator_contract.py), and the
    # resume below is seen by running children.
    both.enqueue(backend, "Record", {"n": 0})
    done = both.cli("queue", "pause", both.queue, "--backend", backend)
    assert done.returncode == 0 and f"paused {backend} queue {both.queue}" in done.stdout
    sv = running()
    both.enqueue(backend, "Record", *[{"n": n} for n in range(1, 4)])
    both.enqueue(backend, "RecordOther", *[{"n": n} for n in range(10, 13)])
    # The child takes its queues in order: unpaused, the first queue's jobs would run first.
    sv.wait_lines("ran", 3)
    assert sorted(sv.ran()) == [10, 11, 12]
    [row] = [q for q in both.json("stats", "--backend", backend)["backends"][backend]["queues"]
             if q["name"] == both.queue]
    assert row["paused"] is True and row["waiting"] == 4
    assert f"{both.queue} (paused)" in both.cli("stats", "--backend", backend).stdout
    assert both.cli("queue", "resume", both.queue, "--backend", backend).returncode == 0
    sv.wait_lines("ran", 7)
    assert sorted(sv.ran()) == [0, 1, 2, 3, 10, 11, 12]
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0


@pytest.mark.parametrize("backend", ["pgmq", "sidekiq"])
def test_purge_asks_for_yes_then_deletes_only_the_waiting_jobs(both, backend):
    both.enqueue(backend, "Record", {"n": 1}, {"n": 2})
    [later] = both.enqueue(backend, "Record", {"n": 3}, delay=3600)
    refused = both.cli("queue", "purge", both.queue, "--backend", backend)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    result = both.json("queue", "purge", both.queue, "--backend", backend, "--yes")
    assert [(r["backend"], r["purged"]) for r in result["results"]] == [(backend, 2)]
    assert both.json("job", later)["found"][0]["state"] == "scheduled"


def test_commands_on_what_does_not_exist_exit_6(both):
    for args, message in ((("job", "0190-none"), "no job 0190-none"),
                          (("queue", "pause", "no_such_queue"), "no backend has a queue"),
                          (("quiet", "nohost:1:000000000000"), "no live supervisor")):
        done = both.cli(*args)
        assert done.returncode == 6 and message in done.stderr, (args, done.stderr)

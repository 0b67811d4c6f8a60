"""The operator commands as a user runs them: `python -m jobrunner stats|dead|check` in a
subprocess, against the real Postgres and Redis."""

import json
import os
import subprocess
import sys
import uuid

import psycopg2
import pytest
import redis

import jobrunner
from jobrunner.backends.pgmq.backend import PgmqBackend
from jobrunner.backends.sidekiq.backend import SidekiqBackend, SidekiqEnqueuer
from jobrunner.config import Settings
from jobrunner.job import ErrorInfo

ERROR = ErrorInfo(error_class="RuntimeError", message="it broke")
#: Nothing listens here: connections are refused at once.
CLOSED_REDIS = "redis://127.0.0.1:1/0"
SETTINGS_ENV = ("JOBRUNNER_PG_DSN", "DATABASE_URL", "JOBRUNNER_REDIS_URL", "REDIS_URL")


class MailWorker(jobrunner.Worker):
    enqueuer = SidekiqEnqueuer
    queue = "mail"

    def handle(self, args):
        pass


def pg_worker(queue):
    return type("CliPgWorker", (jobrunner.Worker,), {
        "enqueuer": jobrunner.PgEnqueuer, "queue": queue, "handle": lambda self, args: None})


def run_cli(*args, **env):
    """Run `python -m jobrunner ARGS` with only the given connection settings in its env."""
    full_env = {k: v for k, v in os.environ.items() if k not in SETTINGS_ENV}
    full_env.update(env)
    return subprocess.run([sys.executable, "-m", "jobrunner", *args], env=full_env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def env(pg_dsn, redis_url):
    return {"JOBRUNNER_PG_DSN": pg_dsn, "JOBRUNNER_REDIS_URL": redis_url}


@pytest.fixture
def pg_consumer(pg_dsn, queue_name):
    worker = pg_worker(queue_name)
    registry = jobrunner.Registry()
    registry.register(worker)
    consumer = PgmqBackend(Settings(pg_dsn=pg_dsn), registry).consumer([queue_name], "t")
    consumer.worker = worker
    yield consumer
    consumer.close()


@pytest.fixture
def sk_consumer(redis_url):
    registry = jobrunner.Registry()
    registry.register(MailWorker)
    consumer = SidekiqBackend(Settings(redis_url=redis_url), registry).consumer(["mail"], "h:1:x:2")
    yield consumer
    consumer.close()


def one(consumer):
    jobs = consumer.fetch(0)
    assert len(jobs) == 1, jobs
    return jobs[0]


def pg_dead(pg_dsn, consumer, args):
    conn = psycopg2.connect(pg_dsn)
    consumer.worker.enqueue(conn, args)
    conn.commit()
    conn.close()
    job = one(consumer)
    consumer.bury(job, ERROR)
    return job


def sk_dead(redis_url, consumer, args):
    with redis.Redis.from_url(redis_url) as client:
        MailWorker.enqueue(client, args)
    job = one(consumer)
    consumer.bury(job, ERROR)
    consumer.flush()        # write the processed/failed counters now
    return job


QUEUE_KEYS = {"name", "waiting", "scheduled", "retrying", "dead", "busy", "latency", "paused"}
TOTAL_KEYS = {"waiting", "scheduled", "retrying", "dead", "busy", "processed", "failed"}
SECTION_KEYS = {"status", "error", "totals", "queues", "processes", "processes_note", "schedules"}


def test_stats_json_reports_both_backends(env, pg_dsn, redis_url, redis_conn, queue_name,
                                          pg_consumer, sk_consumer):
    pg_dead(pg_dsn, pg_consumer, "p1")
    sk_dead(redis_url, sk_consumer, "s1")
    MailWorker.enqueue(redis_conn, "waiting")
    done = run_cli("stats", "--json", **env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == {"schema", "generated_at", "backends"} and result["schema"] == 1
    pgmq, sidekiq = result["backends"]["pgmq"], result["backends"]["sidekiq"]
    for section in (pgmq, sidekiq):
        assert set(section) == SECTION_KEYS and section["status"] == "ok"
        assert set(section["totals"]) == TOTAL_KEYS
        assert all(set(q) == QUEUE_KEYS for q in section["queues"])
    [ours] = [q for q in pgmq["queues"] if q["name"] == queue_name]
    assert (ours["waiting"], ours["dead"]) == (0, 1)
    # No supervisor runs in this test: none of its processes is listed, and none is missing.
    assert isinstance(pgmq["processes"], list) and pgmq["processes_note"] is None
    assert sidekiq["queues"] == [{"name": "mail", "waiting": 1, "scheduled": 0, "retrying": 0,
                                  "dead": 1, "busy": 0, "latency": sidekiq["queues"][0]["latency"],
                                  "paused": False}]
    assert sidekiq["totals"]["processed"] == sidekiq["totals"]["failed"] == 1


def test_stats_prints_an_aligned_table(env, redis_conn, queue_name, pg_consumer):
    MailWorker.enqueue(redis_conn, "waiting")
    done = run_cli("stats", **env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["BACKEND", "QUEUE", "WAITING", "SCHEDULED", "RETRYING", "DEAD",
                                "BUSY", "LATENCY"]
    [mail] = [line for line in lines if line.startswith("sidekiq") and " mail " in line]
    assert mail.split()[2] == "1"
    assert any(queue_name in line for line in lines)
    queue_table = lines[:lines.index("")]
    queue_table = [line for line in queue_table if ":" not in line]   # the processed/failed notes
    assert [line for line in queue_table if "(all)" in line], queue_table
    # same width on every row, the totals included: aligned columns, no cell missing
    assert len({len(line) for line in queue_table}) == 1, queue_table


def test_backend_flag_restricts_to_one_backend(env):
    result = json.loads(run_cli("stats", "--json", "--backend", "sidekiq", **env).stdout)
    assert list(result["backends"]) == ["sidekiq"]


def test_a_configured_backend_that_does_not_answer_exits_4(env):
    done = run_cli("stats", "--json", **dict(env, JOBRUNNER_REDIS_URL=CLOSED_REDIS))
    assert done.returncode == 4
    result = json.loads(done.stdout)
    assert result["backends"]["pgmq"]["status"] == "ok"
    sidekiq = result["backends"]["sidekiq"]
    assert sidekiq["status"] == "unavailable" and "unreachable" in sidekiq["error"]
    assert set(sidekiq["totals"]) == TOTAL_KEYS and sidekiq["queues"] == []
    assert "sidekiq unavailable" in done.stderr


def test_an_unconfigured_backend_that_does_not_answer_is_skipped(redis_url):
    # No Postgres setting: libpq's defaults are tried, and they point at a closed port.
    done = run_cli("stats", "--json", JOBRUNNER_REDIS_URL=redis_url, PGHOST="127.0.0.1",
                   PGPORT="1")
    assert done.returncode == 0, done.stderr
    pgmq = json.loads(done.stdout)["backends"]["pgmq"]
    assert pgmq["status"] == "skipped" and "unreachable" in pgmq["error"]


def test_dead_list_and_retry_on_both_backends(env, pg_dsn, redis_url, queue_name, pg_consumer,
                                              sk_consumer):
    pg_job = pg_dead(pg_dsn, pg_consumer, {"p": 1})
    sk_job = sk_dead(redis_url, sk_consumer, {"s": 1})
    listed = json.loads(run_cli("dead", "list", "--json", **env).stdout)
    ours = {j["id"]: j for j in listed["jobs"] if j["queue"] in (queue_name, "mail")}
    assert set(ours) == {pg_job.id, sk_job.id}
    assert ours[pg_job.id]["msg_id"] == pg_job.receipt[1]
    assert ours[sk_job.id]["args"] == [{"s": 1}]
    assert ours[sk_job.id]["error_class"] == "RuntimeError"
    human = run_cli("dead", "list", "--queue", "mail", **env).stdout
    assert sk_job.id in human and pg_job.id not in human and "RuntimeError: it broke" in human
    done = run_cli("dead", "retry", pg_job.id, sk_job.id, **env)
    assert done.returncode == 0, done.stderr
    assert "2 dead job(s) retried" in done.stdout
    pg_again, sk_again = one(pg_consumer), one(sk_consumer)
    assert (pg_again.id, pg_again.args, pg_again.attempt) == (pg_job.id, {"p": 1}, 1)
    assert (sk_again.id, sk_again.args, sk_again.attempt) == (sk_job.id, {"s": 1}, 1)


def test_dead_retry_by_msg_id_and_unknown_ids(env, pg_dsn, queue_name, pg_consumer):
    job = pg_dead(pg_dsn, pg_consumer, "x")
    done = run_cli("dead", "retry", "--json", "--queue", queue_name, str(job.receipt[1]),
                   "no-such-job", **env)
    assert done.returncode == 6
    result = json.loads(done.stdout)
    assert [j["id"] for j in result["done"]] == [job.id] and result["done"][0]["new_msg_id"]
    assert result["not_found"] == ["no-such-job"]
    assert one(pg_consumer).id == job.id


def test_dead_delete_all_of_one_backend(env, pg_dsn, redis_url, redis_conn, pg_consumer,
                                        sk_consumer, queue_name):
    pg_job = pg_dead(pg_dsn, pg_consumer, "keep")
    sk_dead(redis_url, sk_consumer, "a")
    sk_dead(redis_url, sk_consumer, "b")
    done = run_cli("dead", "delete", "--all", "--backend", "sidekiq", "--json", **env)
    assert done.returncode == 0, done.stderr
    assert sorted(j["args"][0] for j in json.loads(done.stdout)["done"]) == ["a", "b"]
    assert redis_conn.zcard("dead") == 0
    listed = json.loads(run_cli("dead", "list", "--json", "--queue", queue_name, **env).stdout)
    assert [j["id"] for j in listed["jobs"]] == [pg_job.id]


@pytest.mark.parametrize("args", [("dead", "retry"), ("dead", "delete", "x", "--all"), ("dead",)])
def test_dead_action_needs_ids_or_all(env, args):
    assert run_cli(*args, **env).returncode == 2


def test_check_passes_when_the_backends_answer(env):
    done = run_cli("check", **env)
    assert done.returncode == 0, done.stderr
    assert "healthy" in done.stdout.splitlines()[-1]
    result = json.loads(run_cli("check", "--json", **env).stdout)
    assert result["ok"] is True
    assert result["backends"]["pgmq"]["version"] and result["backends"]["sidekiq"]["version"]


def test_check_fails_with_the_reason(env):
    done = run_cli("check", **dict(env, JOBRUNNER_REDIS_URL=CLOSED_REDIS))
    assert done.returncode == 1
    assert "unhealthy" in done.stderr and "unreachable" in done.stderr


@pytest.fixture
def database_without_pgmq(pg_dsn):
    name = "jobrunner_nopgmq_" + uuid.uuid4().hex[:8]
    admin_conn = psycopg2.connect(pg_dsn)
    admin_conn.autocommit = True
    with admin_conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    dsn = psycopg2.extensions.make_dsn(pg_dsn, dbname=name)
    yield dsn
    with admin_conn.cursor() as cur:
        cur.execute(f"DROP DATABASE {name} WITH (FORCE)")
    admin_conn.close()


def test_check_fails_where_pgmq_is_not_installed(database_without_pgmq):
    done = run_cli("check", "--json", "--backend", "pgmq", JOBRUNNER_PG_DSN=database_without_pgmq)
    assert done.returncode == 1
    pgmq = json.loads(done.stdout)["backends"]["pgmq"]
    assert pgmq["status"] == "unavailable" and "pgmq is not installed" in pgmq["error"]
    assert "jobrunner pgmq install" in done.stderr


def test_every_flag_of_every_command_has_help_and_there_is_a_version():
    import argparse
    import jobrunner
    from jobrunner.cli.main import _parser
    missing, seen = [], 0
    todo = [("jobrunner", _parser())]
    while todo:                               # every command and subcommand, depth first
        name, command = todo.pop()
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{name} {sub}", parser) for sub, parser in action.choices.items()]
            elif action.option_strings:
                seen += 1
                if not action.help:
                    missing.append(f"{name} {'/'.join(action.option_strings)}")
    assert missing == [] and seen > 30
    done = run_cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"jobrunner {jobrunner.__version__}"

"""Hostile stored data: a bad payload a child must set aside in bounded time and space, and rows
that every reader (`jobrunner stats`, `dead list`, `dead retry`) must show as unreadable while
listing the rest. Real supervisors and the real CLI, on this run's own Redis and Postgres."""

import json
import signal
import time
import uuid

import psycopg2
import psycopg2.extras
import pytest
import redis

import jobrunner
from helpers import wait_for
from jobrunner.backends.pgmq.backend import PgmqBackend
from jobrunner.backends.sidekiq import payload
from jobrunner.backends.sidekiq.backend import SidekiqBackend
from jobrunner.config import Settings
from jobrunner.job import ErrorInfo
from supervisor_support import supervise  # noqa: F401  (a fixture)
from test_cli_admin import run_cli

ERROR = ErrorInfo(error_class="RuntimeError", message="it broke")
#: Nested deeper than any JSON decoder of ours will go.
UNDECODABLE = "[" * 10000 + "]" * 10000
#: Decodable, but too deep for Python's json to print again.
DEEP_ARGS = json.loads("[" * 900 + "]" * 900)


# -- a bad payload in a running supervisor (Redis) -------------------------------------------

@pytest.fixture
def redis_queue(redis_url):
    """(a client, the queue, the env of hostile_app on it): this test's own Redis database."""
    queue = "h_" + uuid.uuid4().hex[:10]
    client = redis.Redis.from_url(redis_url)
    env = {"JOBRUNNER_REDIS_URL": redis_url, "TEST_QUEUE": queue}
    yield client, queue, env
    client.close()


def enqueue_records(queue, client, numbers):
    sender = type("Record", (jobrunner.Worker,), {
        "enqueuer": jobrunner.SidekiqEnqueuer, "queue": queue, "handle": lambda self, a: None})
    sender.enqueue_batch(client, [{"n": n} for n in numbers])


def dead_items(client):
    return [json.loads(raw) for raw in client.zrange("dead", 0, -1)]


def wait_logged(sv, condition, what, timeout=20):
    """``wait_for`` whose failure shows the supervisor's log as it was then."""
    try:
        wait_for(condition, timeout, message=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; log:\n{sv.log()[-4000:]}") from None


def test_a_20_mb_payload_of_invalid_utf8_goes_dead_bounded_and_the_jobs_after_it_run(
        supervise, redis_queue):
    client, queue, env = redis_queue
    size = 20 * 1024 * 1024
    client.lpush(f"queue:{queue}", b"\xff" * size)    # fetched first: pushed first
    enqueue_records(queue, client, range(1, 6))
    sv = supervise("hostile_app", "--processes", "1", env=env)
    wait_logged(sv, lambda: client.zcard("dead") == 1 and set(sv.ran()) == {1, 2, 3, 4, 5},
                "the payload dead and the jobs run")
    (raw,) = client.zrange("dead", 0, -1)
    assert len(raw) < 10 * 1024                       # an excerpt, not 20 MB
    (item,) = dead_items(client)
    assert item["class"] == "jobrunner.InvalidPayload" and item["payload_bytes"] == size
    assert item["error_message"].startswith("invalid JSON") and str(size) in item["error_message"]
    assert item["args"][0].startswith("\\xff\\xff") and item["args"][0].endswith("…")
    assert client.llen(f"queue:{queue}") == 0
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0


def test_a_bad_payload_whose_handling_hangs_is_killed_at_its_time_limit(supervise,
                                                                        redis_queue):
    # HOSTILE_STALL: setting a bad payload aside hangs, and its time limit is 1 s. No worker
    # of that name is registered, so no worker timeout applies; the payload carries a jid, so
    # recovery knows it was the job running when the child was killed.
    client, queue, env = redis_queue
    bad = json.dumps({"class": "Unregistered", "jid": "0123456789abcdef01234567",
                      "args": "not a list", "queue": queue})
    client.lpush(f"queue:{queue}", bad)
    enqueue_records(queue, client, range(1, 4))
    sv = supervise("hostile_app", "--processes", "1", "--timeout-grace", "0.5",
                   env=dict(env, HOSTILE_STALL="1"))
    wait_logged(sv, lambda: client.zcard("dead") == 1 and set(sv.ran()) == {1, 2, 3},
                "the payload dead and the jobs run")
    (item,) = dead_items(client)
    assert item["jid"] == "0123456789abcdef01234567" and item["error_class"] == "JobTimeout"
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0


def test_a_large_bad_payload_is_kept_as_an_excerpt_with_its_size_and_reason():
    raw = (b"\xff" * 400_000).decode("utf-8", "surrogateescape")
    job = payload.parse(raw, "q")
    member = payload.dead_member(job, ERROR, 1.0)
    assert len(payload.wire(member)) < 6 * 1024
    item = json.loads(member)
    assert item["payload_bytes"] == 400_000 and job.problem in item["error_message"]
    assert item["args"] == ["\\xff" * payload.EXCERPT_BYTES + "…"]
    # Small ones are kept exactly: raw, as Sidekiq keeps invalid JSON, and byte for byte.
    small = (b"\xff{not json" + "é\\ud800".encode()).decode("utf-8", "surrogateescape")
    assert payload.dead_member(payload.parse(small, "q"), ERROR, 1.0) == small
    assert payload.wire(small) == b"\xff{not json" + "é\\ud800".encode()
    assert payload.wire(raw) == b"\xff" * 400_000


# -- hostile rows in the dead jobs, read by the CLI ------------------------------------------

class Rows:
    """One backend's dead jobs: one buried by a real consumer, and hostile ones planted."""

    def bury(self, args):
        """Enqueue a job, then fetch it and bury it through the consumer; returns its id."""
        consumer = self.backend.consumer([self.worker.queue], "h:1:abcdefabcdef:2")
        try:
            job_id = self.enqueue(args)
            (job,) = consumer.fetch(0)
            consumer.bury(job, ERROR)
        finally:
            consumer.close()
        return job_id

    def plant_undecodable(self):
        self.plant(UNDECODABLE)

    def _worker(self, name, enqueuer, queue):
        self.worker = type(name, (jobrunner.Worker,), {
            "enqueuer": enqueuer, "queue": queue, "handle": lambda self, a: None})
        registry = jobrunner.Registry()
        registry.register(self.worker)
        return registry


class PgmqRows(Rows):
    """Rows planted in the archive of a fresh queue."""

    name = "pgmq"

    def __init__(self, pg_dsn, queue):
        self.dsn, self.queue = pg_dsn, queue
        self.env = {"JOBRUNNER_PG_DSN": pg_dsn}
        self.listing = ["--backend", "pgmq", "--queue", queue]
        registry = self._worker("HostilePgWorker", jobrunner.PgEnqueuer, queue)
        self.backend = PgmqBackend(Settings(pg_dsn=pg_dsn), registry)

    def enqueue(self, args):
        with psycopg2.connect(self.dsn) as conn:     # commits on leaving
            job_id = self.worker.enqueue(conn, args)
        conn.close()
        return job_id

    def plant(self, body_text):
        """An archive row holding ``body_text`` with the error header of a dead job."""
        header = {"jobrunner_error": {"error_class": "jobrunner.InvalidPayload",
                                      "error_message": "message body is nested too deeply to "
                                                       "decode", "attempts": 1,
                                      "failed_at": time.time()}}
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pgmq.create(%s)", (self.queue,))
            cur.execute(f'INSERT INTO pgmq."a_{self.queue}" (msg_id, vt, message, headers) '
                        f"VALUES (nextval(pg_get_serial_sequence('pgmq.\"q_{self.queue}\"', "
                        f"'msg_id')), now(), %s::jsonb, %s)",
                        (body_text, psycopg2.extras.Json(header)))
        conn.close()

    def plant_deep_args(self, job_id):
        self.plant(json.dumps({"metadata": {"id": job_id, "worker_name": "HostilePgWorker"},
                               "args": DEEP_ARGS}))

    def close(self):
        pass                    # queue_name's fixture drops the queue and its archive


class SidekiqRows(Rows):
    """Members planted in ``dead`` (the test's own Redis database)."""

    name = "sidekiq"

    def __init__(self, redis_url):
        self.env = {"JOBRUNNER_REDIS_URL": redis_url}
        self.listing = ["--backend", "sidekiq"]
        self.client = redis.Redis.from_url(redis_url)
        registry = self._worker("HostileSkWorker", jobrunner.SidekiqEnqueuer, "mail")
        self.backend = SidekiqBackend(Settings(redis_url=redis_url), registry)

    def enqueue(self, args):
        return self.worker.enqueue(self.client, args)

    def plant(self, member):
        self.client.zadd("dead", {member: time.time()})

    def plant_deep_args(self, job_id):
        self.plant(json.dumps({"class": "HostileSkWorker", "args": [DEEP_ARGS], "queue": "mail",
                               "jid": job_id, "error_class": "RuntimeError",
                               "error_message": "deep", "retry_count": 0}))

    def close(self):
        self.client.close()


@pytest.fixture(params=["pgmq", "sidekiq"])
def rows(request):
    if request.param == "pgmq":
        made = PgmqRows(request.getfixturevalue("pg_dsn"), request.getfixturevalue("queue_name"))
    else:
        made = SidekiqRows(request.getfixturevalue("redis_url"))
    yield made
    made.close()


def listed(rows, *flags):
    """``jobrunner dead list`` with ``flags``: (its output, the listing as JSON if asked)."""
    done = run_cli("dead", "list", *rows.listing, *flags, **rows.env)
    assert done.returncode == 0, done.stderr
    return done.stdout, (json.loads(done.stdout)["jobs"] if "--json" in flags else None)


def test_rows_that_cannot_be_read_are_listed_as_unreadable_with_the_others(rows):
    normal = rows.bury({"n": 1})
    rows.plant_undecodable()
    deep = "deep-" + uuid.uuid4().hex[:8]
    rows.plant_deep_args(deep)
    _, jobs = listed(rows, "--json")
    by_id = {job["id"]: job for job in jobs}
    assert by_id[normal]["error_class"] == "RuntimeError" and by_id[normal]["args"]
    (undecodable,) = [job for job in jobs if job["id"] is None]
    assert undecodable["error_class"] == "jobrunner.Unreadable"
    assert "nested too deeply to decode" in undecodable["error_message"]
    assert undecodable["worker"] is None and undecodable["args"][0].startswith("[[[[")
    assert len(undecodable["args"][0]) <= 1001
    assert by_id[deep]["error_class"] == "jobrunner.Unreadable"
    assert "args nest more than 100 deep" in by_id[deep]["error_message"]
    assert by_id[deep]["args"] is None and len(jobs) == 3
    text, _ = listed(rows)
    lines = text.splitlines()
    assert [line for line in lines if normal in line and "RuntimeError: it broke" in line]
    assert [line for line in lines if "unreadable: " in line and "nested too deeply" in line]
    assert [line for line in lines if deep in line and "unreadable: args nest more" in line]


def test_stats_and_dead_retry_read_past_rows_that_cannot_be_read(rows):
    normal = rows.bury({"n": 1})
    rows.plant_undecodable()
    stats = run_cli("stats", "--json", "--backend", rows.name, **rows.env)
    assert stats.returncode == 0, stats.stderr
    section = json.loads(stats.stdout)["backends"][rows.name]
    assert section["status"] == "ok" and section["totals"]["dead"] >= 2
    assert run_cli("stats", "--backend", rows.name, **rows.env).returncode == 0
    retry = run_cli("dead", "retry", "--all", "--json", *rows.listing[2:],
                    "--backend", rows.name, **rows.env)
    assert retry.returncode == 0, retry.stderr
    result = json.loads(retry.stdout)
    assert [job["id"] for job in result["done"]] == [normal]
    (skipped,) = result["skipped"]
    assert skipped["error_class"] == "jobrunner.Unreadable" and skipped["reason"]


@pytest.mark.parametrize("flags", [(), ("--json",)])
def test_dead_entries_with_bytes_or_escapes_that_are_not_unicode_are_listed(redis_url, flags):
    # Sidekiq keeps invalid JSON raw, bytes and all; a JSON "\ud800" escape decodes to a lone
    # surrogate, which no encoding can print.
    rows = SidekiqRows(redis_url)
    try:
        normal = rows.bury("fine")
        rows.plant(b"\xff\xfe{not json")
        lone = "lone-" + uuid.uuid4().hex[:8]
        rows.plant('{"class":"HostileSkWorker","args":["a\\ud800b"],"queue":"mail","jid":"%s",'
                   '"error_class":"RuntimeError","error_message":"x\\udcff"}' % lone)
        text, jobs = listed(rows, *flags)
    finally:
        rows.close()
    if jobs is None:
        assert normal in text and lone in text and "\\ud800" in text
        assert [line for line in text.splitlines()
                if "unreadable: invalid JSON" in line and r'["\\xff\\xfe{not json"]' in line]
        return
    by_id = {job["id"]: job for job in jobs}
    assert by_id[lone]["args"] == ["a\ud800b"] and by_id[lone]["error_message"] == "x\udcff"
    assert by_id[normal]["args"] == ["fine"]
    (raw,) = [job for job in jobs if job["id"] is None]
    assert raw["error_class"] == "jobrunner.Unreadable" and raw["args"] == ["\\xff\\xfe{not json"]
    assert raw["error_message"].startswith("invalid JSON")

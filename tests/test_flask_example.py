"""examples/flask_app.py under Flask's test client, with its workers run by a real supervisor.

The supervisor is `python -m jobrunner run flask_jobs:registry` started in examples/, as the
example's docstring says. Every wait is on an event (rows in a table, items in a Redis list)
with a deadline.
"""

import importlib
import json
import os
import signal
import subprocess
import sys
import uuid

import psycopg2
import pytest
import redis

from helpers import CliProcess, wait_for

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")

pytestmark = pytest.mark.slow


class ExampleProcess(CliProcess):
    """CliProcess, but started in examples/ as a user would start it."""

    def __init__(self, args, env, log_path, cwd=EXAMPLES):
        self.log_path = log_path
        self.log_file = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "jobrunner", *args],
                                     stdout=self.log_file, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, **env), cwd=cwd,
                                     start_new_session=True)


@pytest.fixture
def example(pg_dsn, redis_url, monkeypatch):
    """The example's modules imported afresh for a namespace of this test's own."""
    namespace = "fx_" + uuid.uuid4().hex[:10]
    env = {"JOBRUNNER_PG_DSN": pg_dsn, "JOBRUNNER_REDIS_URL": redis_url,
           "FLASK_EXAMPLE_NAMESPACE": namespace}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(EXAMPLES)
    for name in ("flask_app", "flask_jobs"):
        sys.modules.pop(name, None)
    app_module = importlib.import_module("flask_app")
    app_module.init_db()
    yield app_module, env
    pool = app_module._per_process.get("pg")
    if pool is not None:
        pool.closeall()
    for name in ("flask_app", "flask_jobs"):
        sys.modules.pop(name, None)
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT pgmq.drop_queue(%s) WHERE EXISTS "
                    "(SELECT 1 FROM pgmq.list_queues() WHERE queue_name = %s)",
                    (f"{namespace}_mail",) * 2)
        cur.execute(f"DROP TABLE IF EXISTS {namespace}_welcomed, {namespace}_plans, "
                    f"{namespace}_users")
    conn.close()


def _count(dsn, query, *params):
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchone()[0]
    finally:
        conn.close()


def test_signup_enqueues_in_its_transaction_and_images_on_redis(example, pg_dsn, redis_url,
                                                                 tmp_path):
    app_module, env = example
    jobs = sys.modules["flask_jobs"]
    client = app_module.app.test_client()
    queue_table = f"pgmq.q_{jobs.SendWelcomeEmail.queue}"

    # A refused plan fails the transaction after the job was enqueued on it: nothing remains.
    refused = client.post("/signup", json={"email": "mallory@example.com", "plan": "platinum"})
    assert refused.status_code == 400, refused.get_data(as_text=True)

    created = []
    for email in ("ada@example.com", "grace@example.com", "linus@example.com"):
        reply = client.post("/signup", json={"email": email, "plan": "pro"})
        assert reply.status_code == 201, reply.get_data(as_text=True)
        created.append(reply.get_json()["user_id"])
    duplicate = client.post("/signup", json={"email": "ada@example.com"})
    assert duplicate.status_code == 409

    # The job exists iff its row committed: three users, three messages, no Mallory.
    assert _count(pg_dsn, f"SELECT count(*) FROM {jobs.USERS}") == 3
    assert _count(pg_dsn, f"SELECT count(*) FROM {jobs.USERS} WHERE email LIKE 'mallory%%'") == 0
    assert _count(pg_dsn, f"SELECT count(*) FROM {queue_table}") == 3
    bodies = set()
    conn = psycopg2.connect(pg_dsn)
    with conn.cursor() as cur:
        cur.execute(f"SELECT message FROM {queue_table}")
        bodies = {row[0]["args"]["user_id"] for row in cur.fetchall()}
    conn.close()
    assert bodies == set(created)

    for image in ("cat.png", "dog.png"):
        reply = client.post("/images", json={"image": image})
        assert reply.status_code == 202
        assert reply.get_json()["job_id"]

    supervisor = ExampleProcess(["run", "flask_jobs:registry", "--processes", "2",
                                 "--shutdown-timeout", "5"], env, str(tmp_path / "sv.log"))
    try:
        wait_for(lambda: _count(pg_dsn, f"SELECT count(*) FROM {jobs.WELCOMED}") == 3, 30,
                 message="three welcome emails; log:\n" + supervisor.output()[-2000:])
        rds = redis.Redis.from_url(redis_url)
        resized = wait_for(lambda: [json.loads(x) for x in rds.lrange(jobs.RESIZED, 0, -1)]
                           if rds.llen(jobs.RESIZED) >= 2 else None, 30,
                           message="two resized images")
        rds.close()
        assert sorted(r["image"] for r in resized) == ["cat.png", "dog.png"]
        # Every committed signup's job ran once, and the queue is empty: the rolled-back
        # signup's job was never there to run.
        wait_for(lambda: _count(pg_dsn, f"SELECT count(*) FROM {queue_table}") == 0, 15,
                 message="the pgmq queue to drain")
        conn = psycopg2.connect(pg_dsn)
        with conn.cursor() as cur:
            cur.execute(f"SELECT user_id, email FROM {jobs.WELCOMED} ORDER BY user_id")
            welcomed = cur.fetchall()
        conn.close()
        assert [u for u, _ in welcomed] == sorted(created)
        assert not any(email.startswith("mallory") for _, email in welcomed)
    finally:
        supervisor.signal(signal.SIGTERM)
        code = supervisor.wait(30)
        log = supervisor.output()
        supervisor.stop()
    assert code == 0, log[-3000:]
    assert "registered SendWelcomeEmail" in log and "registered ResizeImage" in log


def test_connections_are_made_per_process(example):
    """A pool made before a fork is not used after it: the forked process makes its own."""
    app_module, _ = example
    first = app_module._resources()["redis"]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        mine = app_module._resources()
        os.write(write, b"new" if mine["redis"] is not first and mine["pid"] == os.getpid()
                 else b"old")
        os._exit(0)
    os.close(write)
    answer = os.read(read, 8)
    os.close(read)
    os.waitpid(pid, 0)
    assert answer == b"new"
    assert app_module._resources()["redis"] is first

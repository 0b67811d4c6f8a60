"""Workers of the Flask example (``flask_app.py``). From this folder:

    jobrunner run flask_jobs:registry

Settings come from the environment, as for any ``jobrunner run``: ``JOBRUNNER_PG_DSN`` or
``DATABASE_URL``, ``JOBRUNNER_REDIS_URL`` or ``REDIS_URL``. ``FLASK_EXAMPLE_NAMESPACE``
(default ``flask_example``) prefixes the example's tables, queues and Redis keys, so several
copies can share one server (the tests do).
"""

import json
import os

import psycopg2
import redis

import jobrunner

NAMESPACE = os.environ.get("FLASK_EXAMPLE_NAMESPACE", "flask_example")
USERS = f"{NAMESPACE}_users"                  # written by POST /signup
PLANS = f"{NAMESPACE}_plans"                  # written by POST /signup, after the enqueue
WELCOMED = f"{NAMESPACE}_welcomed"            # written by SendWelcomeEmail
RESIZED = f"{NAMESPACE}:resized"              # a Redis list written by ResizeImage


def pg_dsn():
    return os.environ.get("JOBRUNNER_PG_DSN") or os.environ.get("DATABASE_URL") or ""


def redis_url():
    return (os.environ.get("JOBRUNNER_REDIS_URL") or os.environ.get("REDIS_URL")
            or "redis://localhost:6379/0")


class SendWelcomeEmail(jobrunner.Worker):
    """Enqueued on Postgres in the same transaction as the user row it needs."""

    enqueuer = jobrunner.PgEnqueuer
    queue = f"{NAMESPACE}_mail"
    max_retries = 5
    timeout = 30

    def __init__(self):
        # One instance per child process, made after the fork: its own connection.
        self.conn = psycopg2.connect(pg_dsn(), application_name="flask-example-worker")
        self.conn.autocommit = True

    def handle(self, args):
        with self.conn.cursor() as cur:
            # "Send" the email: record it. The row is always there, because the job became
            # visible only when the transaction that inserted the row committed.
            cur.execute(f"INSERT INTO {WELCOMED} (user_id, email) "
                        f"SELECT id, email FROM {USERS} WHERE id = %s "
                        f"ON CONFLICT (user_id) DO NOTHING", (args["user_id"],))
            cur.execute(f"SELECT 1 FROM {USERS} WHERE id = %s", (args["user_id"],))
            if cur.fetchone() is None:
                raise LookupError(f"user {args['user_id']} does not exist")


class ResizeImage(jobrunner.Worker):
    """Enqueued on Redis in Sidekiq's format; not part of any database transaction."""

    enqueuer = jobrunner.SidekiqEnqueuer
    queue = f"{NAMESPACE}_images"

    def __init__(self):
        self.redis = redis.Redis.from_url(redis_url())

    def handle(self, args):
        # Idempotent enough for a demo: a run records the image and the pid that resized it.
        self.redis.rpush(RESIZED, json.dumps({"image": args["image"], "pid": os.getpid()}))


registry = jobrunner.Registry()
registry.register(SendWelcomeEmail)
registry.register(ResizeImage)

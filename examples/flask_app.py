"""A Flask app that enqueues jobs: transactional on Postgres, fire-and-forget on Redis.

    cd examples
    export DATABASE_URL=postgresql:///app REDIS_URL=redis://127.0.0.1:6379/0
    flask --app flask_app init-db                 # the example's tables
    jobrunner run flask_jobs:registry &           # the workers (flask_jobs.py)
    flask --app flask_app run
    curl -X POST localhost:5000/signup -H 'content-type: application/json' \\
         -d '{"email": "ada@example.com", "plan": "pro"}'
    curl -X POST localhost:5000/images -H 'content-type: application/json' \\
         -d '{"image": "cat.png"}'

POST /signup inserts the user, enqueues ``SendWelcomeEmail`` on the same psycopg2 connection,
then inserts the user's plan, all in one transaction. If any step fails — a duplicate email
(409) or a plan the database refuses (400, after the job was already enqueued) — the whole
transaction rolls back and the job never existed: the job exists if and only if the row
committed, and it can never run before the row is visible.

POST /images enqueues ``ResizeImage`` on Redis. Redis is not part of the transaction: enqueue
after your commit (here there is nothing to commit).

Connections are made lazily, once per process, on first use: a server that forks workers
(gunicorn, uWSGI) must not share sockets made before the fork, so each pool
remembers the pid that made it and a forked process makes its own.
"""

import os
import threading

import psycopg2
import psycopg2.errors
import psycopg2.pool
import redis
from flask import Flask, g, jsonify, request

from flask_jobs import PLANS, USERS, WELCOMED, ResizeImage, SendWelcomeEmail, pg_dsn, redis_url

app = Flask(__name__)

_lock = threading.Lock()
_per_process = {"pid": None, "pg": None, "redis": None}


def _resources():
    """This process's Postgres pool and Redis client, made on first use after any fork."""
    with _lock:
        if _per_process["pid"] != os.getpid():
            # Made in another process (before a fork): never touch its sockets; make ours.
            _per_process.update(pid=os.getpid(), pg=None, redis=None)
        if _per_process["pg"] is None:
            _per_process["pg"] = psycopg2.pool.ThreadedConnectionPool(
                1, 10, pg_dsn(), application_name="flask-example")
        if _per_process["redis"] is None:
            _per_process["redis"] = redis.Redis.from_url(redis_url())
        return _per_process


def pg_conn():
    """A pooled connection for this request, given back when the request ends."""
    if "pg" not in g:
        g.pg = _resources()["pg"].getconn()
    return g.pg


def redis_conn():
    return _resources()["redis"]


@app.teardown_appcontext
def _give_back(exc):
    conn = g.pop("pg", None)
    if conn is not None:
        if not conn.closed:
            conn.rollback()             # nothing half-done goes back to the pool
        _resources()["pg"].putconn(conn, close=bool(conn.closed))


@app.post("/signup")
def signup():
    body = request.get_json(force=True)
    conn = pg_conn()
    try:
        with conn:                      # one transaction: commit on success, roll back on error
            with conn.cursor() as cur:
                cur.execute(f"INSERT INTO {USERS} (email) VALUES (%s) RETURNING id",
                            (body["email"],))
                user_id = cur.fetchone()[0]
            # On the same connection, inside the same transaction; enqueue never commits.
            job_id = SendWelcomeEmail.enqueue(conn, {"user_id": user_id})
            with conn.cursor() as cur:
                # This can still fail after the enqueue: then the job goes with the rollback.
                cur.execute(f"INSERT INTO {PLANS} (user_id, plan) VALUES (%s, %s)",
                            (user_id, body.get("plan", "free")))
    except psycopg2.errors.UniqueViolation:
        return jsonify(error="email already registered"), 409
    except psycopg2.errors.CheckViolation:
        return jsonify(error=f"unknown plan {body.get('plan')!r}"), 400
    return jsonify(user_id=user_id, job_id=job_id), 201


@app.post("/images")
def images():
    body = request.get_json(force=True)
    job_id = ResizeImage.enqueue(redis_conn(), {"image": body["image"]})
    return jsonify(job_id=job_id), 202


SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {USERS} (id bigserial PRIMARY KEY, email text NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS {PLANS} (
    user_id bigint PRIMARY KEY REFERENCES {USERS}(id),
    plan text NOT NULL CHECK (plan IN ('free', 'pro')));
CREATE TABLE IF NOT EXISTS {WELCOMED} (
    user_id bigint PRIMARY KEY REFERENCES {USERS}(id), email text NOT NULL,
    sent_at timestamptz NOT NULL DEFAULT now());
"""


def init_db(dsn=None):
    """Create the example's tables (idempotent)."""
    conn = psycopg2.connect(dsn if dsn is not None else pg_dsn())
    try:
        with conn, conn.cursor() as cur:
            cur.execute(SCHEMA)
    finally:
        conn.close()


@app.cli.command("init-db")
def init_db_command():
    """Create the example's tables."""
    init_db()
    print("tables ready:", USERS, PLANS, WELCOMED)

"""The operator commands' logic: which backends to talk to, and each command's result as a dict.

A backend is used when its connection setting is given (flag or environment), when
``--backend`` names it, or, failing both, when its default server answers. A backend that must
be used and cannot be reports ``"unavailable"`` with the reason; one that was only probed and
did not answer reports ``"skipped"``. The result shapes are documented in
``docs/operations.md`` and in ``jobrunner/cli/admin.py``; ``SCHEMA`` changes when one changes
incompatibly.
"""

import os
import time

import psycopg2

from jobrunner import config
from jobrunner.backends.pgmq import inspector as pgmq_admin
from jobrunner.backends.sidekiq import inspector as sidekiq_admin
from jobrunner.registry import BACKENDS

SCHEMA = 1
OK, UNAVAILABLE, SKIPPED = "ok", "unavailable", "skipped"
_SETTING = {"pgmq": "pg_dsn", "sidekiq": "redis_url"}
#: Seconds to wait for a server before calling it unreachable.
CONNECT_TIMEOUT = 5


def given(key, flags, environ=None):
    """True when setting ``key`` comes from a flag or the environment, not from a default."""
    environ = os.environ if environ is None else environ
    if flags.get(key) is not None:
        return True
    # The environment names `config.resolve` reads; config keeps the table private.
    names = config._ENVIRONMENT[key][0]
    return any(environ.get(name) for name in names)


class Session:
    """Connections to the selected backends, and how each one answered.

    ``status[name]`` is ``{"status": "ok"|"unavailable"|"skipped", "error": str|None}``;
    ``conns[name]`` exists for the backends that are ``ok``.
    """

    def __init__(self, flags, only=None, environ=None):
        self.settings = config.resolve(flags=flags, environ=environ)
        self.status = {}
        self.conns = {}
        for name in ([only] if only else BACKENDS):
            required = only is not None or given(_SETTING[name], flags, environ)
            self._open(name, required)

    def _open(self, name, required):
        opener = _open_pgmq if name == "pgmq" else _open_sidekiq
        conn, error = opener(self.settings)
        if conn is not None:
            self.conns[name] = conn
            self.status[name] = {"status": OK, "error": None}
        else:
            self.status[name] = {"status": UNAVAILABLE if required else SKIPPED, "error": error}

    def unavailable(self):
        """Names of backends that had to answer and did not."""
        return [n for n, s in self.status.items() if s["status"] == UNAVAILABLE]

    def close(self):
        for conn in self.conns.values():
            conn.close()
        self.conns = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _open_pgmq(settings):
    try:
        conn = psycopg2.connect(settings.pg_dsn or "", connect_timeout=CONNECT_TIMEOUT,
                                application_name="jobrunner-admin")
    except psycopg2.OperationalError as exc:
        return None, f"Postgres is unreachable: {str(exc).strip()}"
    if not pgmq_admin.installed(conn):
        conn.close()
        return None, ("pgmq is not installed in this database: run `jobrunner pgmq install`")
    return conn, None


def _open_sidekiq(settings):
    conn = sidekiq_admin.client(settings.redis_url, timeout=CONNECT_TIMEOUT)
    try:
        conn.ping()
    except Exception as exc:    # redis-py raises several families for a bad URL or server
        conn.close()
        return None, f"Redis at {_safe_url(settings.redis_url)} is unreachable: {exc}"
    return conn, None


def _safe_url(url):
    """The URL without its password, for messages."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


def _module(name):
    return pgmq_admin if name == "pgmq" else sidekiq_admin


# -- stats ----------------------------------------------------------------------------------

_EMPTY_TOTALS = dict.fromkeys(
    ("waiting", "scheduled", "retrying", "dead", "busy", "processed", "failed"))


def stats(session):
    """``jobrunner stats --json``: one section per selected backend."""
    backends = {}
    for name, status in session.status.items():
        section = dict(status, totals=dict(_EMPTY_TOTALS), queues=[], processes=[],
                       processes_note=None, schedules=[])
        if name in session.conns:
            section.update(_module(name).stats(session.conns[name]))
            section["schedules"] = schedules(session.conns[name])
        backends[name] = section
    return {"schema": SCHEMA, "generated_at": time.time(), "backends": backends}


def schedules(conn):
    """Periodic schedules stored in one backend, times as epoch seconds (JSON-friendly)."""
    from jobrunner.schedule import list_schedules
    return [dict(entry, next_run=_epoch(entry["next_run"]), last_run=_epoch(entry["last_run"]))
            for entry in list_schedules(conn)]


def _epoch(moment):
    return None if moment is None else moment.timestamp()


# -- dead jobs ------------------------------------------------------------------------------

def dead_list(session, queue=None, limit=None):
    """``jobrunner dead list --json``: dead jobs of every selected backend, newest first."""
    jobs = []
    for name, conn in session.conns.items():
        jobs += _module(name).dead_jobs(conn, queue=queue, limit=limit)
    jobs.sort(key=lambda job: job["died_at"], reverse=True)
    return {"schema": SCHEMA, "jobs": jobs[:limit] if limit else jobs,
            "backends": dict(session.status)}


def dead_action(session, action, ids=None, queue=None):
    """``jobrunner dead retry|delete``: act on the dead jobs named by ``ids`` (None: all).

    An id is a job id (pgmq ``metadata.id``, Sidekiq ``jid``) or a pgmq msg_id; a msg_id
    that is dead in several pgmq queues is refused as ambiguous unless ``queue`` is given.
    """
    done, skipped, ambiguous = [], [], []
    for name, conn in session.conns.items():
        act = _pgmq_action if name == "pgmq" else _sidekiq_action
        result = act(conn, action, ids, queue)
        done += result[0]
        skipped += result[1]
        ambiguous += result[2]
    matched = {str(e["id"]) for e in done + skipped} | \
              {str(e["msg_id"]) for e in done + skipped if e["msg_id"] is not None}
    not_found = [] if ids is None else \
        [i for i in dict.fromkeys(ids) if i not in matched and i not in ambiguous]
    return {"schema": SCHEMA, "action": action, "done": done, "skipped": skipped,
            "not_found": not_found, "ambiguous": ambiguous, "backends": dict(session.status)}


def _pgmq_action(conn, action, ids, queue):
    entries = pgmq_admin.dead_jobs(conn, queue=queue, ids=ids)
    ambiguous = _ambiguous_msg_ids(entries, ids) if queue is None else []
    entries = [e for e in entries if str(e["msg_id"]) not in ambiguous or e["id"] in (ids or ())]
    by_queue = {}
    for entry in entries:
        by_queue.setdefault(entry["queue"], []).append(entry)
    done = []
    for name, group in by_queue.items():
        msg_ids = [e["msg_id"] for e in group]
        if action == "retry":
            moved = pgmq_admin.retry_dead(conn, name, msg_ids)
            done += [dict(e, new_msg_id=moved[e["msg_id"]]) for e in group if e["msg_id"] in moved]
        else:
            deleted = set(pgmq_admin.delete_dead(conn, name, msg_ids))
            done += [e for e in group if e["msg_id"] in deleted]
    return done, [], ambiguous


def _ambiguous_msg_ids(entries, ids):
    """The given msg_ids that name dead jobs in more than one queue."""
    queues = {}
    for entry in entries:
        queues.setdefault(str(entry["msg_id"]), set()).add(entry["queue"])
    return [i for i in dict.fromkeys(ids or ()) if len(queues.get(i, ())) > 1]


def _sidekiq_action(conn, action, ids, queue):
    if action == "retry":
        retried, skipped = sidekiq_admin.retry_dead(conn, queue=queue, ids=ids)
        return [dict(e, new_msg_id=None) for e in retried], skipped, []
    return sidekiq_admin.delete_dead(conn, queue=queue, ids=ids), [], []


# -- health ---------------------------------------------------------------------------------

def check(session):
    """``jobrunner check --json``: ok when every backend that must answer does, and one does."""
    backends = {}
    for name, status in session.status.items():
        section = dict(status, version=None, warnings=[])
        conn = session.conns.get(name)
        if name == "pgmq" and conn is not None:
            from jobrunner.backends.pgmq.install import installed_version
            section["version"] = installed_version(conn)
            conn.rollback()
        elif name == "sidekiq" and conn is not None:
            section.update(_redis_health(conn, session.settings))
        backends[name] = section
    ok = bool(session.conns) and not session.unavailable()
    return {"schema": SCHEMA, "ok": ok, "backends": backends}


def _redis_health(conn, settings):
    from jobrunner.backends.sidekiq.backend import redis_warnings
    server, memory = conn.info("server"), conn.info("memory")
    return {"version": str(server.get("redis_version")),
            "warnings": redis_warnings(server, memory, settings.sidekiq_fetch,
                                       _safe_url(settings.redis_url))}

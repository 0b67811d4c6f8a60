"""Periodic jobs on pgmq: claim each (schedule, tick) and send its job in one transaction.

Tables (schema ``jobrunner``, created idempotently by the first housekeeper that needs them):
    periodic_ticks      one row per claimed (schedule_key, tick); the primary key makes a claim
                        idempotent across supervisors. Rows older than ``CLAIM_RETENTION`` are
                        pruned, which is longer than any tick a planner can still ask about.
    periodic_schedules  one row per schedule some live supervisor registers: what it runs, when
                        it was first seen (the catch-up floor) and last refreshed. Rows no
                        supervisor refreshed for ``STALE_GRACE`` are deleted.
The job body is the worker's normal envelope with ``metadata.periodic`` =
``{"schedule": <key>, "cron": <cron>, "tick": <epoch seconds>}``; it is sent by the same
``send`` as ``PgEnqueuer`` (``pgmq/enqueue.py``) (queue created if missing, NOTIFY to wake children).
"""

import datetime
import json
import logging
import time

import psycopg2

from jobrunner.job import new_job_id
from jobrunner.schedule import CLAIM_RETENTION, STALE_GRACE, Planner, next_run, schedules_for
from jobrunner.job import encode_args
from jobrunner.backends.pgmq.connection import SCHEMA_DDL, transaction
from jobrunner.backends.pgmq.enqueue import envelope_texts, send

log = logging.getLogger("jobrunner.periodic")

DDL = SCHEMA_DDL + """
CREATE TABLE IF NOT EXISTS jobrunner.periodic_ticks (
    schedule_key text NOT NULL,
    tick timestamptz NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule_key, tick));
CREATE INDEX IF NOT EXISTS periodic_ticks_tick ON jobrunner.periodic_ticks (tick);
CREATE TABLE IF NOT EXISTS jobrunner.periodic_schedules (
    schedule_key text PRIMARY KEY,
    worker text NOT NULL,
    cron text NOT NULL,
    args jsonb,
    timezone text NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT now(),
    seen_at timestamptz NOT NULL DEFAULT now());
DO $$ BEGIN
    -- Added in a later version. Checked first: ALTER TABLE locks the table even when the column
    -- exists, and would wait behind any open transaction that read it.
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = 'jobrunner'
                   AND table_name = 'periodic_schedules' AND column_name = 'queue') THEN
        ALTER TABLE jobrunner.periodic_schedules ADD COLUMN queue text;
    END IF;
END $$;
"""

REFRESH = """
INSERT INTO jobrunner.periodic_schedules (schedule_key, worker, cron, args, timezone, queue)
VALUES (%s, %s, %s, %s::jsonb, %s, %s)
ON CONFLICT (schedule_key) DO UPDATE SET seen_at = now(), queue = EXCLUDED.queue
RETURNING extract(epoch FROM first_seen)
"""

CLAIM = """
INSERT INTO jobrunner.periodic_ticks (schedule_key, tick) VALUES (%s, to_timestamp(%s))
ON CONFLICT DO NOTHING
"""

PRUNE = """
DELETE FROM jobrunner.periodic_ticks WHERE tick < now() - make_interval(secs => %s);
DELETE FROM jobrunner.periodic_schedules WHERE seen_at < now() - make_interval(secs => %s);
"""


class PgmqPeriodic:
    """Fires the pgmq schedules of one supervisor over the housekeeper's connection."""

    def __init__(self, conn, schedules, clock=time.time):
        self.conn = conn
        self.planner = Planner(schedules)
        self.clock = clock
        self._tables_ready = False

    @classmethod
    def for_registry(cls, conn, registry):
        return cls(conn, schedules_for(registry, "pgmq"))

    def tick(self):
        """Claim and enqueue every due tick; a no-op without schedules."""
        if not self.planner.schedules:
            return
        now = self.clock()
        if not self._tables_ready:
            ensure_tables(self.conn)
            self._tables_ready = True
        if self.planner.refresh_due(now):
            self.planner.refreshed(now, refresh(self.conn, self.planner.schedules))
            prune(self.conn)
        failed = set()
        for schedule, tick in self.planner.due(now):
            if not self._claim(schedule, tick):
                failed.add(schedule.key)
        self.planner.passed(now, failed)

    def _claim(self, schedule, tick):
        """Claim one tick; False if it failed and should be tried again next pass."""
        try:
            if claim(self.conn, schedule, tick):
                log.info("periodic %s (%s): enqueued the tick of %s", schedule.worker.name,
                         schedule.cron, _iso(tick))
            return True
        except psycopg2.Error as exc:
            if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
                raise   # the housekeeper reconnects; claims are retried by the next planner
            # One broken schedule (its queue, say) must not stop the others or the heartbeat.
            log.error("periodic %s (%s): tick of %s failed: %s", schedule.worker.name,
                      schedule.cron, _iso(tick), exc)
            return False


def ensure_tables(conn):
    """Create the schema and tables if missing (idempotent, safe from many supervisors)."""
    transaction(conn, lambda cur: cur.execute(DDL))


def refresh(conn, schedules):
    """Mark ``schedules`` as live; returns ``{schedule key: first seen, epoch seconds}``."""
    def work(cur):
        first_seen = {}
        for schedule in sorted(schedules, key=lambda s: s.key):   # one lock order for all
            info = schedule.describe()
            cur.execute(REFRESH, (schedule.key, info["worker"], info["cron"],
                                  json.dumps(info["args"]), info["timezone"], info["queue"]))
            first_seen[schedule.key] = float(cur.fetchone()[0])
        return first_seen
    return transaction(conn, work)


def prune(conn, retention=CLAIM_RETENTION, grace=STALE_GRACE):
    """Delete claims older than ``retention`` and schedules no one refreshed for ``grace``.

    Autocommit, apart from ``refresh``: deleting other supervisors' rows while holding locks
    on our own could deadlock with theirs.
    """
    with conn.cursor() as cur:
        cur.execute(PRUNE, (retention, grace))


def claim(conn, schedule, tick):
    """Claim ``tick`` of ``schedule`` and send its job, both or neither; True if we won it.

    A supervisor that loses waits for the winner's transaction and then inserts nothing.
    """
    def work(cur):
        cur.execute(CLAIM, (schedule.key, int(tick)))
        if cur.rowcount != 1:
            return False
        periodic = {"schedule": schedule.key, "cron": schedule.cron, "tick": int(tick)}
        bodies = envelope_texts(schedule.worker.name,
                                [encode_args(schedule.worker.name, schedule.args)],
                                [new_job_id()], metadata={"periodic": periodic})
        send(conn, schedule.worker.queue, bodies, None)
        return True
    return transaction(conn, work)


#: The stored schedules; ``queue`` read through ``to_jsonb`` so that a table made before the
#: column was added (and not yet altered by a newer supervisor) still lists.
LIST = """
SELECT s.schedule_key, s.worker, s.cron, s.args, s.timezone, to_jsonb(s) ->> 'queue',
       (SELECT extract(epoch FROM max(t.tick)) FROM jobrunner.periodic_ticks t
        WHERE t.schedule_key = s.schedule_key)
FROM jobrunner.periodic_schedules s {where} ORDER BY s.worker, s.cron, s.schedule_key
"""


def _stored(conn, key=None):
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('jobrunner.periodic_schedules') IS NOT NULL")
        if not cur.fetchone()[0]:
            return []
        where = "WHERE s.schedule_key = %s" if key is not None else ""
        cur.execute(LIST.format(where=where), (key,) if key is not None else ())
        return cur.fetchall()


def list_schedules(conn, now=None):
    """Stored pgmq schedules as dicts {key, worker, cron, args, timezone, queue, next_run,
    last_run}.

    Runs plain SELECTs on ``conn`` and never commits; [] before any periodic job ran.
    ``next_run`` / ``last_run`` are aware UTC datetimes (``last_run``: the latest claimed tick).
    """
    now = time.time() if now is None else now
    return [{"key": key, "worker": worker, "cron": cron, "args": args, "timezone": timezone,
             "queue": queue, "next_run": next_run(cron, timezone, now),
             "last_run": _utc(last) if last is not None else None}
            for key, worker, cron, args, timezone, queue, last in _stored(conn)]


def stored_schedule(conn, key):
    """``Schedule.describe()`` of the stored schedule ``key``, or None."""
    for _, worker, cron, args, timezone, queue, _ in _stored(conn, key):
        return {"worker": worker, "cron": cron, "args": args, "timezone": timezone,
                "queue": queue}
    return None


def _utc(epoch):
    return datetime.datetime.fromtimestamp(float(epoch), datetime.timezone.utc)


def _iso(epoch):
    return _utc(epoch).isoformat()

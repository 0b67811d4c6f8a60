"""Runs settled per minute on pgmq (``Inspector.history``): written by the housekeepers.

Table (schema ``jobrunner``, created idempotently by ``jobrunner pgmq install`` or the first
housekeeper that writes to it):
    history   one row per minute and supervisor: ``minute`` (its start), ``identity``,
              ``processed``, ``failed``: that supervisor's totals for the minute so far.

A housekeeper writes its supervisor's recent minutes (``SupervisorSnapshot.settled``) in one
upsert, only in a tick where they changed, and a count never goes down (``GREATEST``), so a
snapshot written twice, or late, changes nothing. Rows older than ``KEEP_SECONDS`` are deleted
at most once a minute per housekeeper. Reading a day is one indexed range scan, grouped by
minute.
"""

import logging
import time

import psycopg2

from jobrunner.backends.pgmq.connection import SCHEMA_DDL, transaction

log = logging.getLogger("jobrunner.pgmq")

#: Seconds a minute's rows are kept: a day, and an hour to spare.
KEEP_SECONDS = 25 * 3600
#: Seconds between a housekeeper's deletions of old rows.
PRUNE_SECONDS = 60

DDL = SCHEMA_DDL + """
CREATE TABLE IF NOT EXISTS jobrunner.history (
    minute timestamptz NOT NULL,
    identity text NOT NULL,
    processed bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, identity));
"""

_WRITE = """
INSERT INTO jobrunner.history AS h (minute, identity, processed, failed)
SELECT to_timestamp(m), %s, p, f
FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[]) AS t(m, p, f)
ON CONFLICT (minute, identity) DO UPDATE SET
    processed = GREATEST(h.processed, EXCLUDED.processed),
    failed = GREATEST(h.failed, EXCLUDED.failed)
"""

_PRUNE = ("DELETE FROM jobrunner.history "
          "WHERE minute < clock_timestamp() - make_interval(secs => %s)")

_READ = """
SELECT extract(epoch FROM minute)::bigint, sum(processed)::bigint, sum(failed)::bigint
FROM jobrunner.history WHERE minute BETWEEN to_timestamp(%s) AND to_timestamp(%s)
GROUP BY minute
"""


class HistoryWriter:
    """One supervisor's minutes, written by its housekeeper over the housekeeper's connection
    (autocommit); ``connection_errors``: the backend's, which are raised, not logged."""

    def __init__(self, conn, identity, connection_errors, clock=time.monotonic):
        self.conn = conn
        self.identity = identity
        self.connection_errors = connection_errors
        self.clock = clock
        self._tables_ready = False
        self._written = {}        # minute -> (processed, failed) as last written
        self._pruned_at = None
        self._logged_at = None

    def write(self, settled):
        """Upsert the minutes of ``settled`` that changed since the last write. A lost
        connection raises (the housekeeper reconnects and the next snapshot has them all);
        any other error is logged, at most once a minute, and the write tried next tick."""
        changed = {minute: counts for minute, counts in settled.items()
                   if self._written.get(minute) != counts}
        try:
            if changed:
                self._upsert(changed)
            self._written = dict(settled)
            self._prune_if_due()
        except psycopg2.Error as exc:
            if isinstance(exc, self.connection_errors):
                raise
            now = self.clock()
            if self._logged_at is None or now - self._logged_at >= PRUNE_SECONDS:
                log.error("cannot write the per-minute history to jobrunner.history: %s", exc)
                self._logged_at = now

    def _upsert(self, changed):
        if not self._tables_ready:
            transaction(self.conn, lambda cur: cur.execute(DDL))
            self._tables_ready = True
        minutes = sorted(changed)
        with self.conn.cursor() as cur:
            cur.execute(_WRITE, (self.identity, minutes, [changed[m][0] for m in minutes],
                                 [changed[m][1] for m in minutes]))

    def _prune_if_due(self):
        now = self.clock()
        if not self._tables_ready or (self._pruned_at is not None
                                      and now - self._pruned_at < PRUNE_SECONDS):
            return
        with self.conn.cursor() as cur:
            cur.execute(_PRUNE, (KEEP_SECONDS,))
        self._pruned_at = now


def history(conn, minutes, now=None):
    """``Inspector.history`` on pgmq: the last ``minutes`` minutes by this process's clock
    (the minutes are the supervisors'), zeros where no row is (all zeros while the table
    does not exist)."""
    last = int((time.time() if now is None else now) // 60) * 60
    window = [last - 60 * back for back in range(max(0, int(minutes)) - 1, -1, -1)]
    found = {}
    if window:
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT to_regclass('jobrunner.history') IS NOT NULL")
                if cur.fetchone()[0]:
                    cur.execute(_READ, (window[0], window[-1]))
                    found = {minute: (processed, failed) for minute, processed, failed in cur}
        finally:
            conn.rollback()     # read-only; end the snapshot so no transaction stays open
    return [{"minute": minute, "processed": int(found.get(minute, (0, 0))[0]),
             "failed": int(found.get(minute, (0, 0))[1])} for minute in window]

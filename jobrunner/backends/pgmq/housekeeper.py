"""pgmq upkeep for one supervisor: its registration, leases of long jobs, jobs of dead children,
its runs per minute, the VACUUM of the queue tables it drains."""

import logging
import time

import psycopg2

from jobrunner.job import crash_error
from jobrunner.job import Job
from jobrunner.lifecycle import RetryLater, after_failure
from jobrunner.retry import exponential_delay
from jobrunner.backends.base import Housekeeper
from jobrunner.backends.pgmq.connection import UNBOUNDED_LEASE, connect
from jobrunner.backends.pgmq.history import HistoryWriter
from jobrunner.backends.pgmq.processes import Registration
from jobrunner.backends.pgmq.sql import (ack_action, acks_sql, archive, queue_table, release,
                                         retry_later)
from jobrunner.backends.pgmq.schedules import PgmqPeriodic
from jobrunner.backends.pgmq.vacuum import QueueVacuum

log = logging.getLogger("jobrunner.pgmq")

#: Renew a running job's lease when less than this fraction of it is left.
RENEW_FRACTION = 0.5


class PgmqHousekeeper(Housekeeper):
    """Registers its supervisor, keeps leases ahead of long-running jobs and puts back what
    dead children held."""

    def __init__(self, backend, identity):
        self.backend = backend
        self.identity = identity
        self.conn = connect(backend.settings.pg_dsn)
        self.cursor = self.conn.cursor()
        self._renewed = {}   # (queue, msg_id) -> monotonic time of the last renewal
        # periodic jobs: see pgmq/schedules.py
        self.periodic = PgmqPeriodic.for_registry(self.conn, backend.registry)
        # the supervisor's row in jobrunner.processes: see pgmq/processes.py
        self.registration = Registration(self.conn, identity)
        # the supervisor's runs per minute in jobrunner.history: see pgmq/history.py
        self.history = HistoryWriter(self.conn, identity, backend.connection_errors)
        # dead rows of drained jobs, which every read steps over: see pgmq/vacuum.py
        self.vacuum = QueueVacuum(backend.settings.pg_dsn, self.cursor)

    def record_counts(self, state):
        self.history.write(state.settled)

    def tick(self, state):
        self._renew_leases(state)
        if not state.quiet:   # periodic jobs: quiet stops enqueueing, as Sidekiq's poller does
            self.periodic.tick()
        self.history.write(state.settled)
        self.vacuum.tick(state)
        # Last: the signals it takes out of the row are lost if a later step raised.
        return self.registration.beat(state)

    def _renew_leases(self, state):
        """Push the lease of jobs with no timeout forward, so no other child reads them."""
        running = set()
        now = time.monotonic()
        for job in state.busy:
            if not job.token:
                continue
            queue, msg_id = job.token[:2]
            key = (queue, msg_id)
            running.add(key)
            if self.backend.lease_seconds(queue) != UNBOUNDED_LEASE:
                continue   # bounded jobs are killed before their lease runs out
            last = self._renewed.get(key, now)
            self._renewed.setdefault(key, now)
            if now - last >= UNBOUNDED_LEASE * RENEW_FRACTION:
                self.cursor.execute("SELECT pgmq.set_vt(%s, %s::bigint, %s)",
                                    (queue, msg_id, UNBOUNDED_LEASE))
                self._renewed[key] = now
        for key in set(self._renewed) - running:
            del self._renewed[key]

    def recover(self, child_id, tokens, crashed, reason=None, held=(), finished=()):
        self._ack_finished([entry for entry in finished if entry and entry.get("token")],
                           crashed)
        for token in tokens:
            if not token:
                continue
            queue, msg_id, read_ct = token[:3]
            read_at = token[3] if len(token) > 3 else None
            if not crashed:
                release(self.cursor, [token])
                continue
            self._fail_crashed(queue, msg_id, read_ct, crash_error(reason), read_at)
        self._release_held([token for token in held if token])

    def _ack_finished(self, entries, crashed):
        """Succeeded, the ack held by the child for its next fetch: settle them as it would
        have (delete, or archive for ``success_action = "archive"``), guarded by read_ct.

        After a clean stop the child has written them itself and this changes nothing, so
        only a crash is worth a line."""
        acked = {}
        for entry in entries:
            queue, msg_id, read_ct = entry["token"][:3]
            action = ack_action(self.backend.registry, entry.get("worker"))
            acked.setdefault((queue, action), []).append((msg_id, read_ct))
        if acked:
            self.cursor.execute(*acks_sql(acked))
            if crashed:
                log.info("acked %d job(s) that succeeded in a child that died before it could",
                         len(entries))

    def _release_held(self, tokens):
        """Fetched, never started: visible again now, without spending an attempt. Guarded by
        the read, so a message already settled or read again since is left alone."""
        count = release(self.cursor, tokens)
        if count:
            log.info("put back %d job(s) a stopped child had fetched but not started", count)

    def _fail_crashed(self, queue, msg_id, read_ct, error, read_at=None):
        """The child died mid-run: that run is a failed attempt (poison jobs end dead)."""
        self.cursor.execute(f"SELECT message FROM {queue_table('q', queue)} WHERE msg_id = %s",
                            (msg_id,))
        row = self.cursor.fetchone()
        if row is None:
            return
        worker = self._worker_of(row[0])
        job = Job(queue=queue, worker_name=worker.name if worker else None, attempt=read_ct)
        decision = after_failure(job, worker, exponential_delay)
        if isinstance(decision, RetryLater):
            retry_later(self.cursor, queue, msg_id, error, read_ct, decision.delay, read_at)
            log.warning("job msg_id=%s in %s: child died; retry in %ss", msg_id, queue,
                        int(decision.delay))
        else:       # pgmq keeps every dead job: its messages carry no "discard" option
            archive(self.cursor, queue, msg_id, error, read_ct, read_at)
            log.error("job msg_id=%s in %s: child died on its last attempt; archived as dead",
                      msg_id, queue)

    def _worker_of(self, body):
        metadata = body.get("metadata") if isinstance(body, dict) else None
        name = metadata.get("worker_name") if isinstance(metadata, dict) else None
        return self.backend.registry.lookup(name) if isinstance(name, str) else None

    def close(self):
        if self.conn.closed:
            return
        self.vacuum.close()
        try:
            self.registration.close()
        except psycopg2.Error as exc:     # the row goes anyway once its beat is a minute old
            log.warning("could not remove this supervisor's row from jobrunner.processes: %s",
                        exc)
        finally:
            self.conn.close()


"""The pgmq backend: enqueue in the caller's transaction, read with a lease, settle by msg_id.

Storage (pgmq's own tables, one queue per jobrunner queue):
    pgmq.q_<queue>   live messages; ``vt`` is the lease/visibility time, ``read_ct`` the attempt.
    pgmq.a_<queue>   archive: successes with success_action "archive", and dead jobs.
Message body (Roadster's envelope):
    {"metadata": {"id": "<uuid v7>", "worker_name": "<name>"}, "args": <JSON value>}
Headers: a failed run records ``{"jobrunner_error": {"error_class", "error_message",
    "attempts", "failed_at", "backtrace"}}`` in the message's ``headers`` (``backtrace``: the
    lines the worker's ``backtrace`` option keeps, maybe none), so a dead job in the archive
    keeps why it died (the body stays exactly as the producer wrote it). A job an operator
    kills before it ever failed gets ``jobrunner.Killed`` there, with attempts = read_ct.
Wake-up: the enqueuer sends ``NOTIFY jobrunner_pgmq, '<queue>'`` in the same transaction, so
    children wake when the job commits; they still poll, for producers that do not notify and for
    delayed or released messages. The wait also wakes on the child's pipe (a stop, at once).
Batching: a fetch reads up to ``limit`` messages (the child's adaptive prefetch) and, in the same
    statement and transaction, deletes (or archives) the messages acked since the last fetch, so
    a deep queue of short jobs costs one round trip and one commit per batch. An acked message
    stays in the queue, leased, until that next statement (or ``flush`` when idle); if the child
    dies in between, the supervisor has the housekeeper ack it (``slot.py``).
Paused queues: a consumer skips the queues listed in ``jobrunner.paused_queues``, read again
    every ``PAUSE_CHECK_SECONDS`` (``backends/paused.py``); with all of its queues paused, a fetch
    only waits.
Processes: each supervisor's housekeeper keeps its row in ``jobrunner.processes``, and takes
    the signals operators leave there (``pgmq/processes.py``).
The statements that read and settle are in ``pgmq/sql.py``; what operators see and do is in
``pgmq/inspector.py`` and the modules it names.
"""

import logging
import select
import time

import psycopg2
import psycopg2.errors
import psycopg2.extras

from jobrunner.backends.base import Backend, Consumer
from jobrunner.backends.paused import PausedQueues, wait_while_paused
from jobrunner.backends.pgmq.connection import (CHANNEL, LEASE_MARGIN, MISSING_PGMQ, TOO_DEEP,
                                                UNBOUNDED_LEASE, behind_pooler, connect,
                                                listens)
from jobrunner.backends.pgmq.processes import paused_queues
from jobrunner.backends.pgmq.sql import (ack_action, acks_sql, archive, queue_table, read_sql,
                                         release, retry_later)
from jobrunner.errors import BackendUnavailable, ServerUnreachable
from jobrunner.job import TRACE_FIELD, Job, trace_context_of
from jobrunner.retry import exponential_delay

log = logging.getLogger("jobrunner.pgmq")


def parse_message(queue, row):
    """A ``Job`` from a ``pgmq.read`` row (a dict); bad bodies get ``problem`` set."""
    receipt = (queue, row["msg_id"], row["read_ct"], row.get("last_read_at"))
    base = {"queue": queue, "attempt": row["read_ct"], "receipt": receipt,
            "enqueued_at": row["enqueued_at"].timestamp() if row["enqueued_at"] else None}
    body = row["message"]
    if body is TOO_DEEP:
        return Job(problem="message body is nested too deeply to decode", **base)
    if not isinstance(body, dict):
        return Job(problem=f"message body is {type(body).__name__}, not a JSON object", **base)
    metadata = body.get("metadata")
    if not isinstance(metadata, dict):
        return Job(problem="message has no `metadata` object", **base)
    job_id = metadata.get("id")
    name = metadata.get("worker_name")
    if not isinstance(name, str) or not name:
        return Job(id=job_id, problem="message metadata has no `worker_name` string", **base)
    if "args" not in body:
        return Job(id=job_id, worker_name=name, problem="message has no `args`", **base)
    headers = row.get("headers")
    carried = headers.get(TRACE_FIELD) if isinstance(headers, dict) else None
    return Job(id=job_id, worker_name=name, args=body["args"],
               trace_context=trace_context_of(carried), **base)


class PgmqConsumer(Consumer):
    """Reads from the child's queues in order and settles each message by id."""

    def __init__(self, backend, queues, child_id, acks=None):
        self.backend = backend
        self.queues = list(queues)
        self.leases = {q: backend.lease_seconds(q) for q in self.queues}
        self.batch = backend.settings.pgmq_batch
        # (queue, "delete" | "archive") -> [(msg_id, read_ct)] not written yet
        self._acked = {key: list(receipts) for key, receipts in (acks or {}).items()}
        self.conn = connect(backend.settings.pg_dsn)
        self.cursor = self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor)
        # Through a transaction pooler a LISTEN lands on a server connection that other
        # clients then use: our notifications would go to them, and never to us.
        if listens(backend.settings.pg_listen, self.conn):
            self.cursor.execute(f"LISTEN {CHANNEL}")
        self._check_queues()
        self._read_sql = {q: read_sql(q, self._has_last_read_at(q)) for q in self.queues}
        # Paused queues (jobrunner.paused_queues) are read again every PAUSE_CHECK_SECONDS.
        self.paused = PausedQueues(self.queues, lambda: paused_queues(self.conn))

    def _check_queues(self):
        for queue in self.queues:
            self.cursor.execute("SELECT pgmq.create(%s)", (queue,))

    def _has_last_read_at(self, queue):
        """pgmq 1.13's tables have ``last_read_at``, which its ``read`` sets; 1.5's do not."""
        self.cursor.execute("SELECT 1 FROM pg_attribute WHERE attrelid = %s::regclass "
                            "AND attname = 'last_read_at' AND NOT attisdropped",
                            (queue_table("q", queue),))
        return self.cursor.fetchone() is not None

    def fetch(self, timeout, wake=None, limit=1):
        """Up to ``limit`` (at least ``pgmq_batch``) messages of the queues not paused; waits
        for a NOTIFY, the next visible message, ``wake`` (a file descriptor) or ``timeout``,
        whichever comes first."""
        limit = max(int(limit), self.batch)
        queues = self.paused.serving()
        if not queues:
            wait_while_paused(timeout, wake)
            return []
        jobs = self._read_round(queues, limit)
        if jobs:
            return jobs
        # Never past the next read of the paused queues, so a pause is seen in time.
        seconds = min(timeout, self._seconds_to_next_visible(queues),
                      self.paused.next_check_in())
        if not self._wait(seconds, wake) and seconds >= timeout:
            # The whole timeout passed with no news: the caller's next fetch reads first, so a
            # read now would be a second one for nothing (an idle child's round trips).
            return []
        return self._read_round(queues, limit)

    def _read_round(self, queues, limit):
        for queue in queues:
            sql, params = acks_sql(self._acked)
            self.cursor.execute(sql + self._read_sql[queue], params + [self.leases[queue], limit])
            self._acked = {}          # written: only now, so a failed statement keeps them
            rows = self.cursor.fetchall()
            if rows:
                rows.sort(key=lambda row: row["msg_id"])     # queue order (see read_sql)
                return [parse_message(queue, row) for row in rows]
        return []

    def _seconds_to_next_visible(self, queues):
        """Seconds until the earliest hidden message of ``queues`` turns visible (delayed or
        leased)."""
        parts = " UNION ALL ".join(f"SELECT min(vt) AS vt FROM {queue_table('q', q)}"
                                   for q in queues)
        self.cursor.execute(f"SELECT extract(epoch FROM min(vt) - clock_timestamp()) AS wait "
                            f"FROM ({parts}) AS due")
        wait = self.cursor.fetchone()["wait"]
        return float("inf") if wait is None else max(0.0, float(wait))

    def _wait(self, seconds, wake=None):
        """Sleep until a NOTIFY for one of our queues arrives (returns True), ``wake`` is
        readable or ``seconds`` pass (False)."""
        deadline = time.monotonic() + seconds
        watched = [self.conn] if wake is None else [self.conn, wake]
        while True:
            self.conn.poll()
            if self._take_notifies():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            readable, _, _ = select.select(watched, [], [], remaining)
            if wake is not None and wake in readable:
                return False

    def _take_notifies(self):
        notifies, self.conn.notifies[:] = list(self.conn.notifies), []
        return any(n.payload in self.leases for n in notifies)

    def ack(self, job):
        self.ack_later(job)
        self.flush()

    def ack_later(self, job):
        """``ack``, written with the next fetch's statement (or by ``flush`` when idle)."""
        queue, msg_id, read_ct, _ = job.receipt
        action = ack_action(self.backend.registry, job.worker_name)
        self._acked.setdefault((queue, action), []).append((msg_id, read_ct))

    def flush(self):
        sql, params = acks_sql(self._acked)
        if sql:
            self.cursor.execute(sql, params)
        self._acked = {}

    def take_unsent_acks(self):
        acked, self._acked = self._acked, {}
        return acked or None

    def retry(self, job, delay, error):
        queue, msg_id, read_ct, read_at = job.receipt
        retry_later(self.cursor, queue, msg_id, error, read_ct, delay, read_at)

    def bury(self, job, error):
        queue, msg_id, read_ct, read_at = job.receipt
        archive(self.cursor, queue, msg_id, error, read_ct, read_at)

    def requeue(self, job):
        self.requeue_many([job])

    def requeue_many(self, jobs):
        """Release the messages in one statement per queue; pgmq reads by msg_id, so they
        keep their order."""
        release(self.cursor, [job.receipt for job in jobs])

    def default_backoff(self, retry_count):
        return exponential_delay(retry_count)

    def token(self, job):
        queue, msg_id, read_ct, read_at = job.receipt
        return [queue, msg_id, read_ct, read_at.isoformat() if read_at else None]

    def close(self):
        if not self.conn.closed:
            try:
                self.flush()
            finally:
                self.conn.close()


class PgmqBackend(Backend):
    """pgmq on Postgres through psycopg2."""

    name = "pgmq"
    setting = "pg_dsn"
    # OperationalError covers a full disk and a server shutting down; a read-only
    # transaction is a standby, mid-failover: an outage, retried, not a reason to give up.
    connection_errors = (psycopg2.OperationalError, psycopg2.InterfaceError,
                         psycopg2.errors.ReadOnlySqlTransaction, ServerUnreachable)

    def lease_seconds(self, queue):
        """Read lease for ``queue``: its longest worker timeout plus grace and margin."""
        timeouts = [w.timeout for w in self.registry.workers("pgmq") if w.queue == queue]
        if not timeouts or any(t is None for t in timeouts):
            return UNBOUNDED_LEASE
        return int(max(timeouts) + self.settings.timeout_grace + LEASE_MARGIN)

    def consumer(self, queues, child_id, acks=None):
        return PgmqConsumer(self, queues, child_id, acks=acks)

    def housekeeper(self, identity):
        from jobrunner.backends.pgmq.housekeeper import PgmqHousekeeper
        return PgmqHousekeeper(self, identity)

    def check(self):
        from jobrunner.backends.pgmq.install import installed_version
        if self.settings.pgmq_install:
            self.install()
        conn = connect(self.settings.pg_dsn, "jobrunner-check", timeout=5, autocommit=False)
        try:
            if installed_version(conn) is None:
                raise BackendUnavailable(MISSING_PGMQ)
            return self._pooler_warnings(conn)
        finally:
            conn.close()

    def _pooler_warnings(self, conn):
        if self.settings.pg_listen != "auto" or not behind_pooler(conn):
            return []
        return [f"Postgres is reached through a connection pooler (PgBouncer?): idle children "
                f"poll for jobs every {self.settings.fetch_timeout:g}s (fetch_timeout) instead "
                f"of waiting for NOTIFY, which a transaction pooler cannot deliver. With "
                f"session pooling, JOBRUNNER_PG_LISTEN=on brings NOTIFY back."]

    def install(self):
        from jobrunner.backends.pgmq.install import install
        conn = connect(self.settings.pg_dsn, "jobrunner-install", timeout=5, autocommit=False,
                       tolerate_deep_json=False)
        try:
            return install(conn)
        finally:
            conn.close()

    def inspector(self, timeout=5.0, purpose="jobrunner-admin", bounded=False):
        from jobrunner.backends.pgmq.inspector import PgmqInspector, installed
        # Autocommit: every inspector statement stands alone (a dead-job retry is one
        # statement), so no read leaves a transaction open and no failed one poisons the next.
        conn = connect(self.settings.pg_dsn, purpose, timeout=timeout,
                       statement_timeout=timeout if bounded else None, tolerate_deep_json=False)
        if not installed(conn):
            conn.close()
            raise BackendUnavailable("pgmq is not installed in this database: "
                                     "run `jobrunner pgmq install`")
        return PgmqInspector(conn)

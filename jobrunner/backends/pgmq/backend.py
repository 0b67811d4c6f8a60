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
Many queues: a fetch reads only the queues likely to have work; the others are surveyed
    together, in one statement, once per ``fetch_timeout`` (``pgmq/survey.py``), so an idle
    child costs one statement per ``fetch_timeout`` however many queues it serves.
Paused queues: a consumer skips the queues listed in ``jobrunner.paused_queues``, read with
    each survey or every ``PAUSE_CHECK_SECONDS`` (``backends/paused.py``); with all of its
    queues paused, a fetch only waits.
Processes: each supervisor's housekeeper keeps its row in ``jobrunner.processes``, and takes
    the signals operators leave there (``pgmq/processes.py``).
Dead rows: it also VACUUMs the queue tables its supervisor drains, which reads would otherwise
    step over (``pgmq/vacuum.py``).
The consumer is in ``pgmq/consumer.py``, the statements that read and settle in
``pgmq/sql.py``; what operators see and do is in ``pgmq/inspector.py`` and the modules it names.
"""

import psycopg2
import psycopg2.errors

from jobrunner.backends.base import Backend
from jobrunner.backends.pgmq.connection import (LEASE_MARGIN, MISSING_PGMQ, UNBOUNDED_LEASE,
                                                behind_pooler, connect)
from jobrunner.backends.pgmq.consumer import PgmqConsumer
from jobrunner.errors import BackendUnavailable, ServerUnreachable


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

"""The pgmq consumer: one child's reads, waits and settles over its own connection.

A fetch reads only the queues likely to have work (``survey.py``): a NOTIFY names the queue a
job was committed to, and the rest are looked at together, in one statement, once per poll
interval. The order of the reads is the pool's (``queue_order.py``): strict, or weighted at
random. Acks ride on the next statement of the fetch (see ``backend.py``).
"""

import logging
import select
import time

import psycopg2
import psycopg2.errors
import psycopg2.extras

from jobrunner.backends.base import Consumer
from jobrunner.backends.paused import PausedQueues, wait_while_paused
from jobrunner.backends.pgmq.connection import CHANNEL, TOO_DEEP, connect, listens
from jobrunner.backends.pgmq.processes import paused_queues
from jobrunner.backends.pgmq.sql import (ack_action, acks_sql, archive, queue_table, read_sql,
                                         release, retry_later, survey_sql)
from jobrunner.backends.pgmq.survey import QueueKnowledge
from jobrunner.backends.queue_order import is_weighted, normalize_queues, queue_order
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
    """Reads from the child's queues in the pool's order and settles each message by id."""

    def __init__(self, backend, queues, child_id, acks=None):
        self.backend = backend
        settings = backend.settings
        self.queues = list(dict.fromkeys(queues))
        self.leases = {q: backend.lease_seconds(q) for q in self.queues}
        self.batch = settings.pgmq_batch
        self.weighted = is_weighted(normalize_queues(self.queues), settings.queue_order)
        self.known = QueueKnowledge(recheck=max(0.01, float(settings.fetch_timeout)))
        # (queue, "delete" | "archive") -> [(msg_id, read_ct)] not written yet
        self._acked = {key: list(receipts) for key, receipts in (acks or {}).items()}
        self.conn = connect(settings.pg_dsn)
        self.cursor = self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor)
        # Through a transaction pooler a LISTEN lands on a server connection that other
        # clients then use: our notifications would go to them, and never to us.
        if listens(settings.pg_listen, self.conn):
            self.cursor.execute(f"LISTEN {CHANNEL}")
        self._check_queues()
        self._read_sql = {q: read_sql(q, self._has_last_read_at(q)) for q in self.queues}
        # Paused queues (jobrunner.paused_queues) come with each survey; a consumer busy on
        # one queue, which needs none, reads them every PAUSE_CHECK_SECONDS.
        self.paused = PausedQueues(self.queues, lambda: paused_queues(self.conn))
        self._paused_table = False      # whether the survey can read that table yet

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
        self.conn.poll()                # NOTIFYs that came since: a higher queue may have work
        self._learn_notifies()
        self._survey(self.known.to_survey(self.queues, time.monotonic()))
        queues = self.paused.serving()
        if not queues:
            wait_while_paused(timeout, wake)
            return []
        jobs = self._read_round(queues, limit)
        if jobs:
            return jobs
        self._survey(self.known.unknown_wait(queues))
        # Never past the next read of the paused queues, so a pause is seen in time.
        seconds = min(timeout, self.known.seconds_to_next_visible(queues, time.monotonic()),
                      self.paused.next_check_in())
        if not self._wait(seconds, wake) and seconds >= timeout:
            # The whole timeout passed with no news: the caller's next fetch starts with what
            # is due, so looking now would be a second look for nothing (an idle child's cost).
            return []
        self._survey(self.known.to_survey(queues, time.monotonic()))
        return self._read_round(queues, limit)

    def _execute(self, sql, params):
        """``sql`` with the acks held since the last statement written first, in one round
        trip; they are dropped only once it succeeded, so a failed statement keeps them."""
        acks, ack_params = acks_sql(self._acked)
        self.cursor.execute(acks + sql, ack_params + list(params))
        self._acked = {}
        self._learn_notifies()

    def _read_round(self, queues, limit):
        now = time.monotonic()
        order = queue_order(normalize_queues(queues), True) if self.weighted else queues
        for queue in order:
            if not self.known.likely_has_work(queue, now):
                continue
            self._execute(self._read_sql[queue], [self.leases[queue], limit])
            rows = self.cursor.fetchall()
            self.known.read(queue, bool(rows), time.monotonic())
            if rows:
                rows.sort(key=lambda row: row["msg_id"])     # queue order (see read_sql)
                return [parse_message(queue, row) for row in rows]
        return []

    def _survey(self, queues):
        """Look at ``queues`` in one statement: which have a visible message, when the others'
        next one turns visible, and which queues are paused."""
        if not queues:
            return
        try:
            self._execute(survey_sql(queues, self._paused_table), [])
        except psycopg2.errors.UndefinedTable:
            if not self._paused_table:
                raise                   # a queue table itself is gone
            self._paused_table = False  # dropped since: the statement changed nothing
            return self._survey(queues)
        row = self.cursor.fetchone()
        now = time.monotonic()
        for queue, wait in zip(queues, row["waits"]):
            self.known.surveyed(queue, wait, now)
        if row["paused"] is not None:
            self.paused.learn(row["paused"])
        elif not row["paused_exists"]:
            self.paused.learn(())           # no table: nothing is paused
        self._paused_table = row["paused_exists"]

    def _wait(self, seconds, wake=None):
        """Sleep until a NOTIFY for one of our queues arrives (returns True), ``wake`` is
        readable or ``seconds`` pass (False)."""
        deadline = time.monotonic() + seconds
        watched = [self.conn] if wake is None else [self.conn, wake]
        while True:
            self.conn.poll()
            if self._learn_notifies():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            readable, _, _ = select.select(watched, [], [], remaining)
            if wake is not None and wake in readable:
                return False

    def _learn_notifies(self):
        """Note the queues the NOTIFYs received so far name; True if one is ours."""
        notifies, self.conn.notifies[:] = list(self.conn.notifies), []
        ours = [n.payload for n in notifies if n.payload in self.leases]
        for queue in ours:
            self.known.notified(queue)
        return bool(ours)

    def ack(self, job):
        self.ack_later(job)
        self.flush()

    def ack_later(self, job):
        """``ack``, written with the next fetch's statement (or by ``flush`` when idle)."""
        queue, msg_id, read_ct, _ = job.receipt
        action = ack_action(self.backend.registry, job.worker_name)
        self._acked.setdefault((queue, action), []).append((msg_id, read_ct))

    def flush(self):
        if self._acked:
            self._execute("", [])

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
        for queue in {job.queue for job in jobs}:
            self.known.notified(queue)      # they are visible again

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

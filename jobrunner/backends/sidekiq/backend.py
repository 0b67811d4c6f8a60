"""The Sidekiq backend: jobs in Redis in Sidekiq 6.4's wire format, shared with Ruby Sidekiq.

Roles: ``SidekiqEnqueuer`` writes jobs from web code, ``SidekiqConsumer`` fetches and settles
them in a child, ``SidekiqHousekeeper`` (``sidekiq/housekeeper.py``) heartbeats, promotes due
jobs and recovers orphans, ``SidekiqBackend`` makes them after fork. The JSON rules live in
``sidekiq/payload.py`` and the Lua in ``sidekiq/scripts.py``.

Redis keys (no prefix; ``docs/design.md`` "Sidekiq 6.4 on Redis" has Sidekiq's own):

    queues                   SET   queue names; SADD on every immediate push and promotion
    queue:<q>                LIST  job JSON; producers LPUSH, consumers take from the tail
                                   (BRPOP, or LMOVE/BLMOVE RIGHT->LEFT); RPUSH puts a job back
                                   so it runs next
    schedule                 ZSET  delayed jobs, score = due epoch seconds, no enqueued_at
    retry                    ZSET  failed jobs with Sidekiq's error fields, score = next run
    dead                     ZSET  jobs out of retries, score = time of death; trimmed on every
                                   insert to 180 days and 9,999 entries, as Sidekiq does
    stat:processed, stat:failed              counters (INCRBY)
    stat:processed:<UTC date>, stat:failed:<UTC date>   daily counters, EXPIRE 5 years
    processes                SET   identities of live supervisors (and Ruby processes)
    <identity>               HASH  heartbeat: info, busy, beat, rtt_us, quiet, rss; EXPIRE 60
    <identity>:workers       HASH  one field per busy child -> {"queue","payload","run_at"}
    <identity>-signals       LIST  remote TSTP/TERM/TTIN pushed by Sidekiq's API/Web UI
    jobrunner:inflight:<child_id>  LIST  ours: jobs a child holds (reliable fetch), newest at
                                   the head, exact raw strings; the job stays in Redis from
                                   fetch until it is settled
    jobrunner:inflight       SET   ours: every in-flight list key, so recovery can find them
    jobrunner:paused         SET   ours: paused queue names (``sidekiq/control.py``); consumers
                                   read it every PAUSE_CHECK_SECONDS and skip those queues

``child_id`` is ``"<identity>:<child pid>"``; the owner of an in-flight list is its identity
(everything before the last ``:``), whose heartbeat hash tells whether it is alive.

Where we differ from Sidekiq OSS, on purpose:

- Reliable fetch is the default (``sidekiq_fetch="basic"`` is Sidekiq's BRPOP): a job stays
  in Redis until settled, and a settle step is skipped if recovery already took the job.
- The poller removes a due entry and pushes it in one Lua step; Sidekiq's ZREM and LPUSH are
  separate, so a crash between them loses the job there.
- JSON that is not an object, or has no ``class``, goes to ``dead`` wrapped as a
  ``jobrunner.InvalidPayload`` job hash (the raw text is its one argument) so Sidekiq's dead
  set can show it; Sidekiq loses such payloads. Invalid JSON goes to ``dead`` raw, as in Sidekiq.
- A job whose child died counts as a failed attempt (``error_class`` ``jobrunner.ChildDied``).
"""

import logging
import random
import time

import redis

from jobrunner.errors import BackendUnavailable, ConfigError
from jobrunner.redact import redact
from jobrunner.retry import sidekiq_delay
from jobrunner.backends.base import Backend, Consumer
from jobrunner.backends.paused import PausedQueues, wait_while_paused
from jobrunner.backends.sidekiq.client import failure, make_client
from jobrunner.backends.sidekiq.payload import (DEFAULT_MAX_RETRIES, INFLIGHT_SET, dead_member,
                                                encode, failed_item, inflight_key, payload_digest,
                                                is_weighted, load_item, normalize_queues, parse,
                                                queue_key, queue_order, wire)
from jobrunner.backends.sidekiq.control import PAUSED_KEY
from jobrunner.backends.sidekiq.enqueue import SidekiqEnqueuer
from jobrunner.backends.sidekiq.scripts import Scripts, add_counts

__all__ = ["DEFAULT_MAX_RETRIES", "SidekiqBackend", "SidekiqConsumer", "SidekiqEnqueuer"]

log = logging.getLogger("jobrunner.sidekiq")

#: With several queues, reliable fetch polls them all, then blocks this long on the first one:
#: BLMOVE can wait on one list only, so a job on another queue waits at most this long.
MULTI_QUEUE_BLOCK = 0.2
#: Counters kept in memory are written at most this often from the settle path.
FLUSH_INTERVAL = 1.0
#: Extra socket time beyond the longest blocking fetch, so a dead server is noticed.
SOCKET_MARGIN = 10.0


class SidekiqConsumer(Consumer):
    """Fetches from ``queue:<q>`` lists and settles jobs, for one child over one connection.

    ``fetch="reliable"`` moves each job into the child's in-flight list and settles it with
    one Lua step that takes it out again; ``fetch="basic"`` is Sidekiq OSS's plain BRPOP.
    ``client`` must decode replies (``decode_responses=True``), with ``surrogateescape`` so
    payload bytes that are not UTF-8 survive; ``SidekiqBackend.consumer`` makes such a client.
    """

    def __init__(self, client, queues, child_id, *, fetch="reliable", order="strict",
                 max_block=5.0, clock=time.time, rng=random, acks=None):
        self.client = client
        self.queues = normalize_queues(queues)
        if not self.queues:
            raise ConfigError("the sidekiq consumer needs at least one queue")
        self.weighted = is_weighted(self.queues, order)
        self.child_id = child_id
        self.reliable = fetch == "reliable"
        self.inflight = inflight_key(child_id) if self.reliable else None
        self.max_block = _block_limit(client, max_block)
        self.clock = clock
        self.rng = rng
        self.scripts = Scripts(client)
        # One SMEMBERS every PAUSE_CHECK_SECONDS at most, not one per fetch.
        self.paused = PausedQueues([name for name, _ in self.queues],
                                   lambda: client.smembers(PAUSED_KEY))
        self._processed = self._failed = 0
        self._last_flush = time.monotonic()
        self._acked = list(acks or ())   # raw payloads run and acked, still in flight
        if self.reliable:
            self._flush_acks()           # a previous consumer's, before the leftovers go back
            self._take_back_leftovers()

    def _take_back_leftovers(self):
        """Jobs left in this child's list by an earlier run go back to their queues first."""
        count = self.scripts.requeue_all(self.inflight, self.queues[0][0], self.clock())
        if count:
            log.warning("requeued %d job(s) left in %s", count, self.inflight)
        self.client.sadd(INFLIGHT_SET, self.inflight)

    # -- fetching -----------------------------------------------------------------------

    def fetch(self, timeout, wake=None, limit=1):
        """Up to ``limit`` jobs from the first non-empty queue that is not paused; blocks for
        one job at most ``timeout`` seconds when all are empty. ``wake`` is watched only while
        every queue is paused: a blocking Redis command cannot wait on a second socket, so a
        stop waits for ``timeout`` at most. A block ends by the next read of the paused
        queues, so a pause is seen within PAUSE_CHECK_SECONDS."""
        serving = set(self.paused.serving())
        timeout = max(0.0, min(float(timeout), self.max_block, self.paused.next_check_in()))
        queues = [(name, weight) for name, weight in self.queues if name in serving]
        if not queues:
            if self.reliable:
                self._flush_acks()        # they would wait for the next fetch otherwise
            wait_while_paused(timeout, wake)
            return []
        order = queue_order(queues, self.weighted, self.rng)
        if not self.reliable:
            return self._fetch_basic(order, timeout)
        return self._fetch_reliable(order, timeout, max(1, int(limit)))

    def _fetch_basic(self, order, timeout):
        # BRPOP with 0 would block forever, and Redis 6.2 treats 0.001 the same way.
        reply = self.client.brpop([queue_key(q) for q in order], max(timeout, 0.01))
        if not reply:
            return []
        key, raw = reply
        return [parse(raw, key[len("queue:"):])]

    def _fetch_reliable(self, order, timeout, limit):
        """Ack what ran and take up to ``limit`` jobs in one Lua call; when every queue is
        empty, block on the first one (briefly, with several queues, then try all again)."""
        deadline = time.monotonic() + timeout
        keys = [self.inflight, INFLIGHT_SET] + [queue_key(q) for q in order]
        self._write_counts_if_due()
        while True:
            hit = self.scripts.fetch_first(keys=keys,
                                           args=[limit] + [wire(a) for a in self._acked])
            self._acked = []              # written: only now, so a failed call keeps them
            if hit:
                queue = order[int(hit[0]) - 1]
                return [parse(raw, queue) for raw in hit[1:]]
            remaining = deadline - time.monotonic()
            if remaining < 0.001:
                return []
            block = remaining if len(order) == 1 else min(remaining, MULTI_QUEUE_BLOCK)
            raw = self._move(order[0], block)
            if raw is not None:
                return [parse(raw, order[0])]
            if len(order) == 1:
                return []

    def _move(self, queue, timeout):
        if timeout < 0.001:
            return self.client.lmove(queue_key(queue), self.inflight, "RIGHT", "LEFT")
        return self.client.blmove(queue_key(queue), self.inflight, timeout, "RIGHT", "LEFT")

    # -- settling -----------------------------------------------------------------------

    def ack(self, job):
        self._count(processed=1)
        self._settle("ack", job)

    def ack_later(self, job):
        """``ack`` in the next fetch's round trip (or at ``flush``/``close``). Until then the
        job stays in the in-flight list: a child killed in between runs it again (recovery),
        never zero times."""
        if not self.reliable:
            return self.ack(job)
        self._count(processed=1)
        self._acked.append(job.receipt)

    def retry(self, job, delay, error):
        item, _ = load_item(job.receipt)
        if job.problem is not None or item is None:
            # Nothing sensible can run again; keep it where people look for failures.
            return self.bury(job, error)
        now = self.clock()
        member = encode(failed_item(item, error, now, job.queue))
        self._count(processed=1, failed=1)
        self._settle("retry", job, target="retry", member=member, score=now + float(delay),
                     now=now)

    def bury(self, job, error):
        now = self.clock()
        if job.problem is None:
            # Bad payloads never reached execution; Sidekiq does not count them either.
            self._count(processed=1, failed=1)
        self._settle("dead", job, target="dead", member=dead_member(job, error, now), score=now,
                     now=now)

    def discard(self, job, error):
        if job.problem is None:
            self._count(processed=1, failed=1)
        self._settle("discard", job)

    def requeue(self, job):
        self._settle("requeue", job, target=queue_key(job.queue), member=job.receipt)

    def requeue_many(self, jobs):
        # RPUSH puts each job next in line, so the last one goes back first.
        for job in reversed(jobs):
            self.requeue(job)

    def default_backoff(self, retry_count):
        return sidekiq_delay(retry_count)

    def token(self, job):
        # The jid tells crash recovery which in-flight job was running (a failed attempt)
        # and which were only prefetched (put back unchanged). A payload without one is named
        # by a digest of its bytes, so one that overruns its time limit is still found.
        if job.id is None and isinstance(job.receipt, str):
            return {"queue": job.queue, "jid": None, "digest": payload_digest(job.receipt)}
        return {"queue": job.queue, "jid": job.id}

    def _settle(self, mode, job, target=None, member="", score=0.0, now=None):
        now = self.clock() if now is None else now
        counts = self._take_counts(force=False)
        if not self.reliable and mode in ("ack", "discard"):
            # Basic fetch holds nothing in Redis: only the counters may need writing.
            if any(counts):
                self._write_counts(counts, now)
            return
        try:
            settled = self.scripts.run_settle(mode, job.receipt, now=now, inflight=self.inflight,
                                              target=target, member=member, score=score,
                                              counts=counts)
        except Exception:
            self._give_back(counts)
            raise
        if not settled:
            log.warning("job %s was no longer in %s (recovered by the housekeeper?); %s skipped",
                        job.id, self.inflight, mode)

    # -- counters -----------------------------------------------------------------------

    def _count(self, processed=0, failed=0):
        self._processed += processed
        self._failed += failed

    def _take_counts(self, force):
        due = force or time.monotonic() - self._last_flush >= FLUSH_INTERVAL
        if not due:
            return (0, 0)
        counts = (self._processed, self._failed)
        self._processed = self._failed = 0
        self._last_flush = time.monotonic()
        return counts

    def _give_back(self, counts):
        self._processed += counts[0]
        self._failed += counts[1]

    def _write_counts_if_due(self):
        counts = self._take_counts(force=False)
        if any(counts):
            self._write_counts(counts, self.clock())

    def _flush_acks(self):
        if self._acked:
            pipe = self.client.pipeline(transaction=False)
            for raw in self._acked:
                pipe.lrem(wire(self.inflight), -1, wire(raw))
            pipe.execute()
        self._acked = []

    def take_unsent_acks(self):
        acked, self._acked = self._acked, []
        return acked or None

    def _write_counts(self, counts, now):
        pipe = self.client.pipeline(transaction=True)
        add_counts(pipe, counts, now)
        try:
            pipe.execute()
        except Exception:
            self._give_back(counts)
            raise

    def flush(self):
        self._flush_acks()
        counts = self._take_counts(force=True)
        if any(counts):
            self._write_counts(counts, self.clock())
        if self.reliable:
            # Re-register the list in case a recovery pass dropped it while it was empty.
            self.client.sadd(INFLIGHT_SET, self.inflight)

    def close(self):
        """Flush, and unregister the in-flight list when it is empty: every command this
        consumer sent has been answered, so no late write can refill it."""
        try:
            self.flush()
            if self.reliable:
                self.scripts.forget(keys=[self.inflight, INFLIGHT_SET])
        finally:
            self.client.close()


class SidekiqBackend(Backend):
    """Makes Sidekiq consumers and the housekeeper, each over its own new connection."""

    name = "sidekiq"
    setting = "redis_url"
    # A server that is full (maxmemory with noeviction) or read-only (a replica, mid-failover)
    # is an outage like a lost connection: children back off and retry, nothing gives up.
    connection_errors = (redis.ConnectionError, redis.TimeoutError,
                         redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError)

    def _client(self, socket_timeout=5.0):
        return make_client(self.settings.redis_url, socket_timeout, health_check_interval=30)

    def consumer(self, queues, child_id, acks=None):
        queues = queues or self.settings.queues or self.registry.queues("sidekiq")
        max_block = max(float(self.settings.fetch_timeout), 1.0)
        return SidekiqConsumer(self._client(max_block + SOCKET_MARGIN), queues, child_id,
                               fetch=self.settings.sidekiq_fetch,
                               order=self.settings.queue_order, max_block=max_block, acks=acks)

    def housekeeper(self, identity):
        from jobrunner.backends.sidekiq.housekeeper import SidekiqHousekeeper
        return SidekiqHousekeeper(self._client(), identity, registry=self.registry)

    def check(self):
        client = self._client()
        try:
            client.ping()
            return self.health(client)["warnings"]
        except redis.RedisError as exc:
            raise BackendUnavailable(failure(self.settings.redis_url, "is not usable",
                                             exc)) from None
        finally:
            client.close()

    def health(self, client):
        """The server's version and the warnings ``redis_warnings`` finds."""
        server, memory = client.info("server"), client.info("memory")
        return {"version": str(server.get("redis_version")),
                "warnings": redis_warnings(server, memory, self.settings.sidekiq_fetch,
                                           redact(self.settings.redis_url))}

    def inspector(self, timeout=5.0, purpose="jobrunner-admin", bounded=False):
        # Every command is bounded anyway: the client's socket timeout is ``timeout``.
        from jobrunner.backends.sidekiq.inspector import SidekiqInspector, client
        conn = client(self.settings.redis_url, timeout=timeout)
        try:
            conn.ping()
        except Exception as exc:    # redis-py raises several families for a bad URL or server
            conn.close()
            raise BackendUnavailable(failure(self.settings.redis_url, "is unreachable",
                                             exc)) from None
        return SidekiqInspector(conn, self.health)


def _block_limit(client, max_block):
    """The longest blocking fetch this client's socket timeout allows (a reply must come first)."""
    socket_timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
    if socket_timeout is None:
        return max_block
    return max(0.0, min(max_block, float(socket_timeout) - 1.0))


def redis_warnings(server, memory, fetch, where):
    """Warnings for settings that risk losing jobs or versions that lack what we use."""
    warnings = []
    policy = memory.get("maxmemory_policy", "noeviction")
    if policy != "noeviction":
        warnings.append(f"Redis at {where} has maxmemory-policy {policy}: it may evict jobs; "
                        "set it to noeviction")
    version = str(server.get("redis_version", "0"))
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts < (6, 2):
        need = " (reliable fetch needs LMOVE/BLMOVE; use sidekiq_fetch='basic')" \
            if fetch == "reliable" else ""
        warnings.append(f"Redis at {where} is version {version}, older than 6.2{need}")
    return warnings

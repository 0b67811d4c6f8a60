"""``SidekiqConsumer``: one child's fetch from ``queue:<q>`` lists and the settling of its jobs."""

import logging
import random
import time

from jobrunner.errors import ConfigError
from jobrunner.retry import sidekiq_delay
from jobrunner.backends.base import Consumer
from jobrunner.backends.paused import PausedQueues, wait_while_paused
from jobrunner.backends.sidekiq.heartbeat import beaten_key
from jobrunner.backends.sidekiq.payload import (INFLIGHT_SET, NEWEST, dead_member,
                                                encode, failed_item, inflight_key,
                                                owner_identity, payload_digest,
                                                load_item, parse, queue_key, wire)
from jobrunner.backends.queue_order import is_weighted, normalize_queues, queue_order
from jobrunner.backends.sidekiq.control import PAUSED_KEY
from jobrunner.backends.sidekiq.scripts import Scripts, add_counts

log = logging.getLogger("jobrunner.sidekiq")

#: With several queues, reliable fetch polls them all, then blocks on the first one: BLMOVE can
#: wait on one list only, so a job on another queue waits as long as that block. It lasts this
#: long first, and doubles with every round that found nothing, up to the fetch's timeout: a
#: child idle for long costs two round trips per ``fetch_timeout`` whatever its queues, and a
#: job on a queue it does not block on starts within ``fetch_timeout``.
MULTI_QUEUE_BLOCK = 0.2
#: Seconds between fetches of a child whose supervisor's heartbeat has expired.
HELD_RETRY = 0.25
#: Counters kept in memory are written at most this often from the settle path.
FLUSH_INTERVAL = 1.0


class SidekiqConsumer(Consumer):
    """Fetches from ``queue:<q>`` lists and settles jobs, for one child over one connection.

    ``fetch="reliable"`` moves each job into the child's in-flight list and settles it with
    one Lua step that takes it out again; ``fetch="basic"`` is Sidekiq OSS's plain BRPOP.
    ``client`` must decode replies (``decode_responses=True``), with ``surrogateescape`` so
    payload bytes that are not UTF-8 survive; ``SidekiqBackend.consumer`` makes such a client.
    """

    def __init__(self, client, queues, child_id, *, fetch="reliable", order="strict",
                 max_block=5.0, clock=time.time, rng=random, acks=None, version=NEWEST):
        self.client = client
        self.version = version           # how a payload's retry_for counts (``versions.py``)
        self.queues = normalize_queues(queues)
        if not self.queues:
            raise ConfigError("the sidekiq consumer needs at least one queue")
        self.weighted = is_weighted(self.queues, order)
        self.child_id = child_id
        self.reliable = fetch == "reliable"
        self.inflight = inflight_key(child_id) if self.reliable else None
        owner = owner_identity(child_id)
        # FETCH_FIRST's guard: the supervisor's heartbeat and its "has beaten" key.
        self._host_keys = [owner, beaten_key(owner)]
        self.max_block = _block_limit(client, max_block)
        self.clock = clock
        self.rng = rng
        self.scripts = Scripts(client)
        # Basic fetch: one SMEMBERS every PAUSE_CHECK_SECONDS at most, not one per fetch. The
        # reliable fetch script skips paused queues itself and returns them when it took nothing.
        self.paused = PausedQueues([name for name, _ in self.queues],
                                   lambda: client.smembers(PAUSED_KEY))
        self._processed = self._failed = 0
        self._held_since = None          # when the heartbeat was last found expired
        self._empty_rounds = 0           # blocks in a row that found nothing
        self._last_flush = time.monotonic()
        self._acked = list(acks or ())   # raw payloads run and acked, still in flight
        if self.reliable:
            self._flush_acks()           # a previous consumer's, before the leftovers go back
            self._take_back_leftovers()

    def _take_back_leftovers(self):
        """Jobs left in this child's list by an earlier run go back to their queues first."""
        count = self.scripts.requeue_all(self.inflight, self.queues[0][0])
        if count:
            log.warning("requeued %d job(s) left in %s", count, self.inflight)
        self.client.sadd(INFLIGHT_SET, self.inflight)

    # -- fetching -----------------------------------------------------------------------

    def fetch(self, timeout, wake=None, limit=1):
        """Up to ``limit`` jobs from the first non-empty queue that is not paused; blocks for
        one job at most ``timeout`` seconds when all are empty. ``wake`` is watched only while
        every queue is paused: a blocking Redis command cannot wait on a second socket, so a
        stop waits for ``timeout`` at most."""
        timeout = max(0.0, min(float(timeout), self.max_block))
        if not self.reliable:
            return self._fetch_basic(timeout, wake)
        order = queue_order(self.queues, self.weighted, self.rng)
        return self._fetch_reliable(order, timeout, max(1, int(limit)), wake)

    def _fetch_basic(self, timeout, wake):
        """BRPOP on the queues not paused, read every PAUSE_CHECK_SECONDS: a block ends by
        the next read, so a pause is seen in time."""
        serving = set(self.paused.serving())
        timeout = min(timeout, self.paused.next_check_in())
        queues = [(name, weight) for name, weight in self.queues if name in serving]
        if not queues:
            wait_while_paused(timeout, wake)
            return []
        order = queue_order(queues, self.weighted, self.rng)
        # BRPOP with 0 would block forever, and Redis 6.2 treats 0.001 the same way.
        reply = self.client.brpop([queue_key(q) for q in order], max(timeout, 0.01))
        if not reply:
            return []
        key, raw = reply
        return [parse(raw, key[len("queue:"):], self.version)]

    def _fetch_reliable(self, order, timeout, limit, wake=None):
        """Ack what ran and take up to ``limit`` jobs in one Lua call, which skips the paused
        queues; when every queue is empty, block on the first one served (briefly, with
        several queues, then try all again). While the supervisor's heartbeat has expired,
        take nothing (see FETCH_FIRST)."""
        deadline = time.monotonic() + timeout
        keys = [self.inflight, INFLIGHT_SET, *self._host_keys, PAUSED_KEY] + [
            queue_key(q) for q in order]
        self._write_counts_if_due()
        while True:
            hit = self.scripts.fetch_first(keys=keys,
                                           args=[limit] + [wire(a) for a in self._acked])
            self._acked = []              # written: only now, so a failed call keeps them
            if hit == -1:
                self._hold_while_taken_for_dead(deadline, wake)
                return []
            if self._held_since is not None:
                log.warning("%s: the supervisor's heartbeat is back after %.1fs; fetching "
                            "again", self.child_id, time.monotonic() - self._held_since)
                self._held_since = None
            if hit[0] != 0:
                self._empty_rounds = 0
                queue = order[int(hit[0]) - 1]
                return [parse(raw, queue, self.version) for raw in hit[1:]]
            paused = set(hit[1:])
            serving = [queue for queue in order if queue not in paused]
            remaining = deadline - time.monotonic()
            if not serving:
                wait_while_paused(max(0.0, remaining), wake)
                return []
            if remaining < 0.001:
                return []
            block = remaining if len(serving) == 1 else min(
                remaining, MULTI_QUEUE_BLOCK * 2 ** min(self._empty_rounds, 16))
            raw = self._move(serving[0], block)
            if raw is not None:
                self._empty_rounds = 0
                return [parse(raw, serving[0], self.version)]
            self._empty_rounds += 1
            if block >= remaining:        # blocked until the deadline: the time is up
                return []

    def _hold_while_taken_for_dead(self, deadline, wake):
        if self._held_since is None:
            self._held_since = time.monotonic()
            log.warning("%s: this supervisor's heartbeat has expired, so other supervisors "
                        "may be putting back its jobs; fetching nothing until it beats again",
                        self.child_id)
        wait_while_paused(max(0.0, min(deadline - time.monotonic(), HELD_RETRY)), wake)

    def _move(self, queue, timeout):
        """Move one job into the in-flight list, registered in the same round trip: a
        recovery pass may have forgotten the list while it was empty, and a job must never sit
        in a list the sweep does not know."""
        pipe = self.client.pipeline(transaction=False)
        pipe.sadd(INFLIGHT_SET, self.inflight)
        if timeout < 0.001:
            pipe.lmove(queue_key(queue), self.inflight, "RIGHT", "LEFT")
        else:
            pipe.blmove(queue_key(queue), self.inflight, timeout, "RIGHT", "LEFT")
        return pipe.execute()[1]

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
        """Put the unstarted rest of a batch back in one round trip (REQUEUE_MANY). RPUSH puts
        each job next in line, so the last one goes back first."""
        last_first = list(reversed(jobs))
        settled = self.scripts.requeue_many(
            self.inflight, [(job.receipt, queue_key(job.queue)) for job in last_first])
        for job, done in zip(last_first, settled):
            if not done:
                self._warn_unsettled(job, "requeue")

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
            self._warn_unsettled(job, mode)

    def _warn_unsettled(self, job, mode):
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

    def close(self):
        """Flush, and unregister the in-flight list when it is empty: every command this
        consumer sent has been answered, so no late write can refill it."""
        try:
            self.flush()
            if self.reliable:
                self.scripts.forget(keys=[self.inflight, INFLIGHT_SET])
        finally:
            self.client.close()


def _block_limit(client, max_block):
    """The longest blocking fetch this client's socket timeout allows (a reply must come first)."""
    socket_timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
    if socket_timeout is None:
        return max_block
    return max(0.0, min(max_block, float(socket_timeout) - 1.0))

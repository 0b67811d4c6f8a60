"""Sidekiq upkeep for one supervisor: process heartbeat, due-job poller, orphan recovery.

Runs in the supervisor's housekeeping child and is ticked about once a second. Every step that
moves a job is one Lua call (``sidekiq/scripts.py``), so a crash between steps neither loses
nor duplicates a job.
"""

import logging
import random
import time

from jobrunner.job import crash_error
from jobrunner.lifecycle import Bury, RetryLater, after_failure
from jobrunner.retry import sidekiq_delay
from jobrunner.backends.base import Housekeeper
from jobrunner.backends.sidekiq.payload import (DEAD_TIMEOUT, INFLIGHT_SET, child_of_inflight_key,
                                                dead_member, encode, failed_item,
                                                inflight_key, load_item, owner_identity, parse,
                                                process_info, queue_key, queue_of,
                                                stand_in_payload, due_member, wire, work_entry)
from jobrunner.backends.sidekiq.schedules import SidekiqPeriodic
from jobrunner.backends.sidekiq.scripts import Scripts, add_counts

log = logging.getLogger("jobrunner.sidekiq")

#: The error a crashed child's job is retried or buried with.
CHILD_DIED = crash_error("died")
HEARTBEAT_TTL = 60


class SidekiqHousekeeper(Housekeeper):
    """Heartbeat every ~5 s, poller every 2.5-7.5 s, whole-host recovery every ~30 s."""

    beat_interval = 5.0
    poll_average = 5.0
    orphan_interval = 30.0
    #: Seconds the process heartbeat (and so a host's in-flight jobs) outlives the last beat:
    #: another supervisor recovers a lost host's jobs 1-2 ``orphan_interval`` after that.
    heartbeat_ttl = HEARTBEAT_TTL
    #: Entries moved per sorted set and poll, and per Lua call: bounded work per tick.
    promote_limit = 1000
    promote_batch = 100

    def __init__(self, client, identity, registry=None, clock=time.time, rng=random):
        self.client = client
        self.identity = identity
        self.registry = registry
        self.clock = clock
        self.rng = rng
        self.scripts = Scripts(client)
        self._next_beat = self._next_poll = self._next_scan = 0.0
        self._processed = self._failed = 0
        # In-flight lists whose owner had no heartbeat at the last scan: recovered only if
        # still ownerless at the next one, so a supervisor that has just started (children
        # fetching before its first beat) is never taken for dead.
        self._suspects = set()
        # periodic jobs: see sidekiq/schedules.py
        self.periodic = SidekiqPeriodic.for_registry(client, registry)

    def tick(self, state):
        now = time.monotonic()
        signals = []
        if now >= self._next_beat:
            signals = self.beat(state)
            self._next_beat = now + self.beat_interval
        if now >= self._next_poll and not state.quiet:
            moved = self.poll()
            # A full batch means a backlog: come back soon instead of after a random wait.
            busy = moved >= self.promote_limit
            self._next_poll = now + (1.0 if busy else
                                     self.rng.uniform(0.5, 1.5) * self.poll_average)
        if now >= self._next_scan:
            self.recover_orphans(state)
            self._next_scan = now + self.orphan_interval
        if not state.quiet:   # periodic jobs: quiet stops enqueueing, as the poller does
            self.periodic.tick()
        return signals

    # -- heartbeat ----------------------------------------------------------------------

    def beat(self, state):
        """Write Sidekiq's process heartbeat; returns the remote signal popped, if any."""
        now = self.clock()
        workers_key = f"{self.identity}:workers"
        entries = self._work_entries(state)
        counts = (self._processed, self._failed)
        self._processed = self._failed = 0
        pipe = self.client.pipeline(transaction=True)
        add_counts(pipe, counts, now)
        pipe.unlink(workers_key)
        if entries:
            pipe.hset(workers_key, mapping=entries)
            pipe.expire(workers_key, self.heartbeat_ttl)
        try:
            pipe.execute()
        except Exception:
            self._processed += counts[0]
            self._failed += counts[1]
            raise
        started = time.perf_counter()
        self.client.ping()
        rtt_us = int((time.perf_counter() - started) * 1_000_000)
        pipe = self.client.pipeline(transaction=True)
        pipe.sadd("processes", self.identity)
        pipe.exists(self.identity)
        pipe.hset(self.identity, mapping={
            "info": process_info(state, self.identity), "busy": len(state.busy), "beat": now,
            "rtt_us": rtt_us, "quiet": "true" if state.quiet else "false",
            "rss": _rss_kb([state.pid] + [_child_pid(c) for c in state.children])})
        pipe.expire(self.identity, self.heartbeat_ttl)
        pipe.rpop(f"{self.identity}-signals")
        signal = pipe.execute()[-1]
        return [signal] if signal else []

    def _work_entries(self, state):
        """``<identity>:workers`` fields: one per busy job, with its raw payload when held."""
        busy = list(state.busy)
        if not busy:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for running in busy:
            pipe.lrange(inflight_key(running.child_id), 0, -1)
        entries = {}
        for running, held in zip(busy, pipe.execute()):
            payload = _held_payload(held, running.job_id) or stand_in_payload(running)
            field = str(_child_pid(running.child_id) or running.child_id)
            entries[field] = wire(work_entry(running.queue, payload, running.started_at))
        return entries

    # -- poller -------------------------------------------------------------------------

    def poll(self):
        """Move due ``retry`` then ``schedule`` entries to their queues; returns how many."""
        return sum(self._promote(key) for key in ("retry", "schedule"))

    def _promote(self, key):
        now = self.clock()
        seen = 0
        while seen < self.promote_limit:
            size = min(self.promote_batch, self.promote_limit - seen)
            due = self.client.zrangebyscore(key, "-inf", repr(now), start=0, num=size)
            if not due:
                break
            keys = [key, "queues", "dead"]
            args = [repr(now), "(" + repr(now - DEAD_TIMEOUT)]
            for raw in due:
                queue, member = due_member(raw, now)
                keys.append(queue_key(queue) if queue else "dead")
                args += [raw, member, queue or ""]
            self.scripts.run_promote(keys, args)
            seen += len(due)
            if len(due) < size:
                break
        return seen

    # -- recovery -----------------------------------------------------------------------

    def recover(self, child_id, tokens, crashed, reason=None, held=(), finished=()):
        """Settle what the child's in-flight list holds: jobs that succeeded are acked, the
        running one counts a failed attempt after a crash, the rest go back unchanged.

        When a crashed child's running job is not known, every job not known to have waited
        (``held``) is taken to have run: a poison job must not run forever uncounted.
        """
        key = inflight_key(child_id)
        fallback = _token_queue(tokens)
        now = self.clock()
        running = _jids_of(tokens)
        succeeded = _jids_of(entry.get("token") for entry in finished if entry)
        waited = _jids_of(held)
        requeued = 0
        for raw in self.client.lrange(key, 0, -1):
            queue = queue_of(raw, fallback)
            jid = parse(raw, queue).id
            if jid in succeeded:
                if self.scripts.run_settle("ack", raw, now=now, inflight=key):
                    self._processed += 1
            elif not crashed or jid in waited or (running and jid not in running):
                # never started (or a shutdown): back to the head of its queue, unchanged
                requeued += self.scripts.run_settle("requeue", raw, now=now, inflight=key,
                                                    target=queue_key(queue), member=raw)
            else:
                self._fail_orphan(raw, key, queue, now, crash_error(reason))
        self.scripts.forget(keys=[key, INFLIGHT_SET])
        if requeued:
            log.info("requeued %d job(s) of child %s", requeued, child_id)

    def _fail_orphan(self, raw, key, queue, now, error=CHILD_DIED):
        """Count the crashed run as a failed attempt: retry, bury or drop, as a child would."""
        job = parse(raw, queue)
        worker = self.registry.lookup(job.worker_name) \
            if self.registry is not None and job.worker_name else None
        decision = after_failure(job, worker, sidekiq_delay)
        if isinstance(decision, RetryLater):
            outcome = "retry"
            item = failed_item(load_item(raw)[0], error, now, queue)
            done = self.scripts.run_settle("retry", raw, now=now, inflight=key, target="retry",
                                           member=encode(item), score=now + decision.delay)
        elif isinstance(decision, Bury):
            outcome = "dead"
            done = self.scripts.run_settle("dead", raw, now=now, inflight=key, target="dead",
                                           member=dead_member(job, error, now), score=now)
        else:
            outcome = "discard"
            done = self.scripts.run_settle("discard", raw, now=now, inflight=key)
        log.warning("job %s of a dead child: %s", job.id, outcome if done else "already gone")
        if done and job.problem is None:
            self._processed += 1
            self._failed += 1

    def recover_orphans(self, state):
        """Recover in-flight lists whose supervisor's heartbeat has expired (a lost host).

        This supervisor's own children are left to ``recover``, which knows whether each
        stopped for shutdown or crashed. Returns the child ids recovered.
        """
        own_children = set(state.children)
        candidates = []
        for key in self.client.smembers(INFLIGHT_SET):
            child_id = child_of_inflight_key(key)
            owner = owner_identity(child_id)
            if owner != self.identity and child_id not in own_children:
                candidates.append((child_id, owner))
        pipe = self.client.pipeline(transaction=False)
        for _, owner in candidates:
            pipe.exists(owner)
        alive = pipe.execute() if candidates else []
        ownerless = {child_id for (child_id, _), live in zip(candidates, alive) if not live}
        confirmed = sorted(ownerless & self._suspects)
        self._suspects = ownerless - set(confirmed)
        for child_id in confirmed:
            log.warning("recovering jobs of %s: its supervisor's heartbeat expired", child_id)
            self.recover(child_id, [], crashed=True)
        return confirmed

    def close(self):
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.srem("processes", self.identity)
            pipe.unlink(f"{self.identity}:workers")
            add_counts(pipe, (self._processed, self._failed), self.clock())
            pipe.execute()
            self._processed = self._failed = 0
        finally:
            self.client.close()


def _held_payload(held, job_id):
    """The raw payload of ``job_id`` among a child's in-flight strings (the newest if unsure)."""
    for raw in held:
        item, _ = load_item(raw)
        if item is not None and item.get("jid") == job_id:
            return raw
    return held[0] if held else None


def _jids_of(tokens):
    """The jids in Sidekiq tokens (``{"queue", "jid"}``); empty when none are known."""
    return {t["jid"] for t in tokens or () if isinstance(t, dict) and t.get("jid")}


def _token_queue(tokens):
    for token in tokens or ():
        if isinstance(token, dict) and isinstance(token.get("queue"), str) and token["queue"]:
            return token["queue"]
    return "default"


def _child_pid(child_id):
    tail = str(child_id).rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _rss_kb(pids):
    """Total VmRSS in KB of the given processes (the supervisor and its children)."""
    total = 0
    for pid in set(p for p in pids if p):
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except (OSError, ValueError):
            continue
    return total

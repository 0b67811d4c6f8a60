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
from jobrunner.backends.sidekiq.history import HistoryWriter
from jobrunner.backends.sidekiq.metrics import MetricsWriter
from jobrunner.backends.sidekiq.heartbeat import (BEATEN_TTL, beaten_key, process_info,
                                                  stand_in_payload, work_entry, work_keys)
from jobrunner.backends.sidekiq.payload import (DEAD_TIMEOUT, INFLIGHT_SET, NEWEST,
                                                child_of_inflight_key, dead_member, due_member,
                                                encode, failed_item, inflight_key, load_item,
                                                owner_identity, parse, payload_digest,
                                                queue_key, queue_of, wire)
from jobrunner.backends.sidekiq.schedules import SidekiqPeriodic
from jobrunner.backends.sidekiq.scripts import Scripts, add_counts

log = logging.getLogger("jobrunner.sidekiq")

#: The error a crashed child's job is retried or buried with.
CHILD_DIED = crash_error("died")
HEARTBEAT_TTL = 60
#: Per job: how many times it was put back from a gone child with no running job known.
ORPHAN_COUNT_PREFIX = "jobrunner:orphaned:"
ORPHAN_COUNT_TTL = 7 * 24 * 3600


class SidekiqHousekeeper(Housekeeper):
    """Heartbeat every ~5 s (and at once when the supervisor goes quiet), remote signals at
    every tick, poller every 2.5-7.5 s, whole-host recovery every ~30 s."""

    beat_interval = 5.0
    poll_average = 5.0
    orphan_interval = 30.0
    #: Seconds the process heartbeat (and so a host's in-flight jobs) outlives the last beat:
    #: another supervisor recovers a lost host's jobs 1-2 ``orphan_interval`` after that.
    heartbeat_ttl = HEARTBEAT_TTL
    #: Seconds an emptied in-flight list of a dead child stays registered: a command its
    #: child sent before it died can reach the server that late (TCP retransmissions of an
    #: orphaned socket after a network hang), and a job it moves in must still be found.
    late_write_horizon = 600.0
    #: Recoveries with no running job known after which a job is taken to kill its children.
    orphan_limit = 3
    #: Entries moved per sorted set and poll, and per Lua call: bounded work per tick.
    promote_limit = 1000
    promote_batch = 100

    def __init__(self, client, identity, registry=None, clock=time.time, rng=random,
                 version=NEWEST):
        self.client = client
        self.version = version      # the Ruby peers' Sidekiq (``versions.py``)
        self.identity = identity
        self.registry = registry
        self.clock = clock
        self.rng = rng
        self.scripts = Scripts(client)
        self._next_beat = self._next_poll = self._next_scan = 0.0
        self._beat_quiet = None          # the quiet flag the last beat wrote
        self._processed = self._failed = 0
        # child id -> time first seen gone, of registered in-flight lists whose child was not
        # alive at the last scan (see recover_orphans).
        self._suspects = {}
        # periodic jobs: see sidekiq/schedules.py
        self.periodic = SidekiqPeriodic.for_registry(client, registry)
        # the supervisor's runs per minute: see sidekiq/history.py; per class: metrics.py
        self.history = HistoryWriter(client, identity)
        self.metrics = MetricsWriter(client, identity, version)

    def record_counts(self, state):
        self.history.write(state.settled)
        self.metrics.write(state.classes)

    def tick(self, state):
        now = time.monotonic()
        self.history.write(state.settled)     # first: a lost connection then takes no signal
        if now >= self._next_beat or state.quiet != self._beat_quiet:
            # A quiet supervisor shows as quiet (Sidekiq's "stopping") at once.
            signals = self.beat(state)
            self._next_beat = now + self.beat_interval
        else:
            # An operator's quiet or stop is seen within a tick, not a beat: one RPOP.
            signal = self.client.rpop(f"{self.identity}-signals")
            signals = [signal] if signal else []
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
        self.metrics.write(state.classes)     # last: the Metrics tab can wait for the beat
        return signals

    # -- heartbeat ----------------------------------------------------------------------

    def beat(self, state):
        """Write Sidekiq's process heartbeat; returns the remote signal popped, if any."""
        now = self.clock()
        entries = self._work_entries(state)
        counts = (self._processed, self._failed)
        self._processed = self._failed = 0
        pipe = self.client.pipeline(transaction=True)
        add_counts(pipe, counts, now)
        for key in work_keys(self.identity):
            pipe.unlink(key)
            if entries:
                pipe.hset(key, mapping=entries)
                pipe.expire(key, self.heartbeat_ttl)
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
        # ``concurrency`` in the hash itself too: 8.1.2+ reads it before ``info``'s (0 if absent)
        pipe.hset(self.identity, mapping={
            "info": process_info(state, self.identity), "concurrency": int(state.concurrency),
            "busy": len(state.busy), "beat": now,
            "rtt_us": rtt_us, "quiet": "true" if state.quiet else "false",
            "rss": _rss_kb([state.pid] + [_child_pid(c) for c in state.children])})
        pipe.expire(self.identity, self.heartbeat_ttl)
        pipe.set(beaten_key(self.identity), 1, ex=BEATEN_TTL)
        pipe.rpop(f"{self.identity}-signals")
        signal = pipe.execute()[-1]
        self._beat_quiet = state.quiet
        return [signal] if signal else []

    def _work_entries(self, state):
        """Running-job hash fields: one per busy job, with its raw payload when held."""
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
        running one (``tokens``) counts a failed attempt after a crash, and every other job
        goes back unchanged: the supervisor's slot knows exactly which job began, so a job a
        fetch moved in after the child stopped reading is never charged a run it did not have.

        The list stays registered: a write the dead child sent may still reach the server
        (``recover_orphans`` catches it and forgets the list once that can no longer happen).
        """
        key = inflight_key(child_id)
        fallback = _token_queue(tokens)
        now = self.clock()
        running = _names_of(tokens) if crashed else set()
        succeeded = _names_of(entry.get("token") for entry in finished if entry)
        requeued = 0
        for raw in self.client.lrange(key, 0, -1):
            queue = queue_of(raw, fallback)
            name = _name_of(raw, parse(raw, queue).id)
            if name in succeeded:
                if self.scripts.run_settle("ack", raw, now=now, inflight=key):
                    self._processed += 1
            elif name in running:
                self._fail_orphan(raw, key, queue, now, crash_error(reason))
            else:
                requeued += self._requeue(raw, key, queue, now)
        if requeued:
            log.info("requeued %d job(s) of child %s", requeued, child_id)

    def recover_unknown(self, child_id, why="its child is gone"):
        """Put back what a child that is gone held, when nothing says which job it ran (its
        supervisor is gone too, or the hand-off was lost): unchanged, no attempt charged.

        A job that keeps coming back this way (``orphan_limit`` times within a week) is taken
        to be what kills its children and counts as a crashed run, so it ends dead rather
        than looping through hosts for ever. Returns how many jobs the list held."""
        key = inflight_key(child_id)
        now = self.clock()
        requeued = 0
        held = self.client.lrange(key, 0, -1)
        if held:
            log.warning("recovering %d job(s) of %s: %s", len(held), child_id, why)
        for raw in held:
            queue = queue_of(raw, "default")
            jid = parse(raw, queue).id
            if jid and self._orphaned_again(jid) >= self.orphan_limit:
                self._fail_orphan(raw, key, queue, now)
            else:
                requeued += self._requeue(raw, key, queue, now)
        if requeued:
            log.warning("requeued %d job(s) left by %s, unchanged", requeued, child_id)
        return len(held)

    def _requeue(self, raw, key, queue, now):
        """Back to the head of its queue, byte for byte; 1 when moved, 0 when already gone."""
        return self.scripts.run_settle("requeue", raw, now=now, inflight=key,
                                       target=queue_key(queue), member=raw)

    def _orphaned_again(self, jid):
        """Count one more orphaned run of ``jid``; returns the count of the last week."""
        pipe = self.client.pipeline(transaction=True)
        pipe.incr(ORPHAN_COUNT_PREFIX + jid)
        pipe.expire(ORPHAN_COUNT_PREFIX + jid, ORPHAN_COUNT_TTL)
        return pipe.execute()[0]

    def _fail_orphan(self, raw, key, queue, now, error=CHILD_DIED):
        """Count the crashed run as a failed attempt: retry, bury or drop, as a child would."""
        job = parse(raw, queue, self.version)
        worker = self.registry.lookup(job.worker_name) \
            if self.registry is not None and job.worker_name else None
        decision = after_failure(job, worker, sidekiq_delay, now=now)
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
        """Recover every registered in-flight list whose child is gone: this supervisor's own
        children that are no longer alive, and those of supervisors whose heartbeat expired.

        This catches what targeted recovery cannot: a request lost with a killed housekeeper,
        jobs a dead child's late write moved in after its recovery, a lost host. A list is
        recovered when its child was gone at two scans in a row (a supervisor that has just
        started, or a child just spawned, is not taken for dead), and forgotten once it has
        been empty for ``late_write_horizon`` seconds after that. Returns the child ids whose
        jobs were put back.
        """
        now = self.clock()
        gone = self._gone_children(state)
        confirmed = sorted(gone & set(self._suspects))
        self._suspects = {child_id: self._suspects.get(child_id, now) for child_id in gone}
        recovered = []
        for child_id in confirmed:
            why = ("a child of this supervisor that is gone"
                   if owner_identity(child_id) == self.identity
                   else "its supervisor's heartbeat expired")
            if self.recover_unknown(child_id, why):
                recovered.append(child_id)
            elif now - self._suspects[child_id] >= self.late_write_horizon:
                self.scripts.forget(keys=[inflight_key(child_id), INFLIGHT_SET])
                del self._suspects[child_id]
        return recovered

    def _gone_children(self, state):
        """Child ids of registered lists whose child is not alive, as far as one can tell."""
        own_children = set(state.children)
        own, others = set(), []
        for key in self.client.smembers(INFLIGHT_SET):
            child_id = child_of_inflight_key(key)
            owner = owner_identity(child_id)
            if owner == self.identity:
                if child_id not in own_children:
                    own.add(child_id)
            else:
                others.append((child_id, owner))
        pipe = self.client.pipeline(transaction=False)
        for _, owner in others:
            pipe.exists(owner)
        alive = pipe.execute() if others else []
        return own | {child_id for (child_id, _), live in zip(others, alive) if not live}

    def close(self):
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.srem("processes", self.identity)
            pipe.unlink(*work_keys(self.identity))
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


def _names_of(tokens):
    """What Sidekiq tokens (``{"queue", "jid"}``, or ``"digest"`` for a payload without a
    jid) name the jobs by; empty when none are known."""
    return {t.get("jid") or t.get("digest") for t in tokens or ()
            if isinstance(t, dict) and (t.get("jid") or t.get("digest"))}


def _name_of(raw, jid):
    """A held payload's name, as its token gives it: its jid, else a digest of its bytes."""
    return jid or payload_digest(raw)


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

"""The Lua scripts that make each Redis step of the Sidekiq backend atomic, and their callers.

Each script is registered per client with ``redis.Redis.register_script``, which runs it by
EVALSHA and loads it again after NOSCRIPT (a restarted or failed-over Redis). Time values are
computed in Python and passed as strings: Lua numbers print with 14 digits, which would round
Sidekiq's float timestamps.
"""

from jobrunner.backends.sidekiq.payload import (DEAD_TIMEOUT, INFLIGHT_SET, STAT_DAY_TTL,
                                                queue_key, queue_of, stat_keys, wire)

#: Settle one fetched job: take it out of its in-flight list and, in the same step, put it
#: where it goes next. Re-running it after a lost reply does nothing (the LREM finds nothing),
#: and a job the housekeeper already recovered is not written twice.
#:
#: KEYS[1] target: ``queue:<q>`` (requeue), ``retry``, ``dead``, or any key (ack, discard)
#: KEYS[2] the child's in-flight list      KEYS[3..6] stat:processed, stat:failed, daily pair
#: ARGV[1] mode: ack | discard | requeue | retry | dead
#: ARGV[2] "1" when the job must be in KEYS[2] (reliable fetch), "0" for basic fetch
#: ARGV[3] the raw payload as fetched      ARGV[4] the member or list value to write
#: ARGV[5] its score                       ARGV[6] dead cutoff, "(<now - 180 days>"
#: ARGV[7] processed to add, ARGV[8] failed to add, ARGV[9] TTL of the daily counters
#: Returns 1 when settled, 0 when the job was no longer in the in-flight list.
SETTLE = """
local processed, failed = tonumber(ARGV[7]), tonumber(ARGV[8])
if processed > 0 or failed > 0 then
  redis.call('INCRBY', KEYS[3], processed)
  redis.call('INCRBY', KEYS[5], processed)
  redis.call('EXPIRE', KEYS[5], ARGV[9])
  redis.call('INCRBY', KEYS[4], failed)
  redis.call('INCRBY', KEYS[6], failed)
  redis.call('EXPIRE', KEYS[6], ARGV[9])
end
if ARGV[2] == '1' and redis.call('LREM', KEYS[2], -1, ARGV[3]) == 0 then
  return 0
end
local mode = ARGV[1]
if mode == 'requeue' then
  redis.call('RPUSH', KEYS[1], ARGV[4])
elseif mode == 'retry' then
  redis.call('ZADD', KEYS[1], ARGV[5], ARGV[4])
elseif mode == 'dead' then
  redis.call('ZADD', KEYS[1], ARGV[5], ARGV[4])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[6])
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -10000)
end
return 1
"""

#: Reliable fetch in one round trip, with the acks of the jobs run since the last fetch:
#: first take the acked payloads out of the in-flight list, then LMOVE up to ARGV[1] jobs
#: from the first non-empty queue that is not paused (tail, so the queue stays FIFO) to the
#: head of the in-flight list. A job is in Redis at every moment: in its queue, then
#: in-flight until acked. Re-running it after a lost reply is safe (the LREMs find nothing).
#: A child whose supervisor has beaten before but whose heartbeat has expired takes nothing
#: (returns -1): the other supervisors take that host for dead and put back what its children
#: hold, so a job moved in now would run twice. This is the host coming back from a cut
#: link before its housekeeper has beaten again. When nothing is taken, the reply carries the
#: paused queues, so the consumer blocks on a queue that is served without a read of its own.
#:
#: KEYS[1] the child's in-flight list, KEYS[2] ``jobrunner:inflight``, KEYS[3] the heartbeat
#: of the child's supervisor, KEYS[4] its ``jobrunner:beaten:`` key, KEYS[5]
#: ``jobrunner:paused``, KEYS[6..] queue keys (``queue:<name>``)
#: ARGV[1] most jobs to move, ARGV[2..] raw payloads of acked jobs
#: Returns {position of the queue among KEYS[6..] (1-based), raw payload, ...}, -1, or
#: {0, paused queue name, ...} when nothing was taken.
FETCH_FIRST = """
for i = 2, #ARGV do
  redis.call('LREM', KEYS[1], -1, ARGV[i])
end
if redis.call('EXISTS', KEYS[3]) == 0 and redis.call('EXISTS', KEYS[4]) == 1 then
  return -1
end
local limit = tonumber(ARGV[1])
for i = 6, #KEYS do
  local raw = nil
  if redis.call('SISMEMBER', KEYS[5], string.sub(KEYS[i], 7)) == 0 then
    raw = redis.call('LMOVE', KEYS[i], KEYS[1], 'RIGHT', 'LEFT')
  end
  if raw then
    local out = {i - 5, raw}
    for n = 2, limit do
      raw = redis.call('LMOVE', KEYS[i], KEYS[1], 'RIGHT', 'LEFT')
      if not raw then
        break
      end
      out[n + 1] = raw
    end
    redis.call('SADD', KEYS[2], KEYS[1])
    return out
  end
end
local out = redis.call('SMEMBERS', KEYS[5])
table.insert(out, 1, 0)
return out
"""

#: Put the unstarted rest of a batch back, in one step per call: each job is taken out of the
#: in-flight list and RPUSHed onto its queue, as SETTLE's requeue does one job at a time.
#:
#: KEYS[1] the child's in-flight list (any key for basic fetch), KEYS[1 + i] job i's queue
#: ARGV[1] "1" when each job must be in KEYS[1] (reliable fetch), ARGV[1 + i] job i's raw payload
#: Returns, per job, 1 when it went back, 0 when it had already left the in-flight list.
REQUEUE_MANY = """
local out = {}
for i = 2, #KEYS do
  if ARGV[1] == '0' or redis.call('LREM', KEYS[1], -1, ARGV[i]) == 1 then
    redis.call('RPUSH', KEYS[i], ARGV[i])
    out[i - 1] = 1
  else
    out[i - 1] = 0
  end
end
return out
"""

#: Move due ``schedule``/``retry`` entries to their queues. Python reads the due members and
#: rewrites them (fresh ``enqueued_at``); this script pushes each one only if its ZREM
#: succeeds, in one step. Sidekiq ZREMs in Lua and LPUSHes from Ruby afterwards, so a crash
#: in between loses the job; here it cannot, and two pollers never push the same entry.
#: An operator's run or kill of a ``schedule``/``retry``/``dead`` entry is the same step
#: (``sidekiq/sets.py``), so a poller and two operators together still move it once.
#:
#: KEYS[1] the sorted set, KEYS[2] ``queues``, KEYS[3] ``dead``, KEYS[3 + i] job i's target list
#: ARGV[1] now (dead score), ARGV[2] dead cutoff, then per job i: ARGV[3i] the member as
#: read, ARGV[3i+1] the value to push, ARGV[3i+2] its queue name ("" to bury it in ``dead``)
#: Returns the number of entries moved.
PROMOTE = """
local moved = 0
for i = 1, #KEYS - 3 do
  local old, new, queue = ARGV[3 * i], ARGV[3 * i + 1], ARGV[3 * i + 2]
  if redis.call('ZREM', KEYS[1], old) == 1 then
    if queue == '' then
      redis.call('ZADD', KEYS[3], ARGV[1], new)
      redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[2])
      redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -10000)
    else
      redis.call('SADD', KEYS[2], queue)
      redis.call('LPUSH', KEYS[3 + i], new)
    end
    moved = moved + 1
  end
end
return moved
"""

#: Drop an in-flight list from the registry once it is empty (Redis deletes empty lists).
#: KEYS[1] the in-flight list, KEYS[2] ``jobrunner:inflight``. Returns 1 when forgotten.
FORGET = """
if redis.call('LLEN', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], KEYS[1])
  return 1
end
return 0
"""


class Scripts:
    """The scripts above, registered on one client, and the atomic steps built on them."""

    def __init__(self, client):
        self.client = client
        self.settle = client.register_script(SETTLE)
        self.requeue_many_script = client.register_script(REQUEUE_MANY)
        self.fetch_first = client.register_script(FETCH_FIRST)
        self.promote = client.register_script(PROMOTE)
        self.forget = client.register_script(FORGET)

    def run_settle(self, mode, raw, *, now, inflight=None, target=None, member="", score=0.0,
                   counts=(0, 0)):
        """Run SETTLE; ``inflight`` None means basic fetch (nothing to take the job out of).

        Returns True when the job was settled, False when it had already left ``inflight``.
        """
        keys = [target or inflight or "dead", inflight or target or "dead", *stat_keys(now)]
        args = [mode, "1" if inflight else "0", raw, member, repr(float(score)),
                "(" + repr(float(now - DEAD_TIMEOUT)), counts[0], counts[1], STAT_DAY_TTL]
        return bool(self.settle(keys=[wire(k) for k in keys], args=[wire(a) for a in args]))

    def run_promote(self, keys, args):
        """Run PROMOTE (see above); returns the number of entries moved."""
        return self.promote(keys=[wire(k) for k in keys], args=[wire(a) for a in args])

    def requeue_many(self, inflight, jobs):
        """Run REQUEUE_MANY: ``jobs`` are ``(raw payload, queue key)``, pushed in that order;
        ``inflight`` None means basic fetch. Returns, per job, whether it went back."""
        if not jobs:
            return []
        keys = [inflight or jobs[0][1]] + [target for _, target in jobs]
        args = ["1" if inflight else "0"] + [raw for raw, _ in jobs]
        return [bool(done) for done in self.requeue_many_script(
            keys=[wire(k) for k in keys], args=[wire(a) for a in args])]

    def requeue_all(self, inflight, fallback_queue):
        """RPUSH every job of ``inflight`` back, unchanged, to the queue named in it.

        The head of the list is the newest fetch, so pushing from the head leaves the oldest
        job at the tail of its queue, the next one popped. Returns the number requeued.
        """
        jobs = [(raw, queue_key(queue_of(raw, fallback_queue)))
                for raw in self.client.lrange(inflight, 0, -1)]
        count = sum(self.requeue_many(inflight, jobs))
        self.forget(keys=[inflight, INFLIGHT_SET])
        return count


def add_counts(pipe, counts, now):
    """Queue Sidekiq's counter commands on ``pipe``: INCRBY the totals and the UTC-day keys
    (renewing their 5-year TTL), even for zero as Sidekiq's heartbeat does."""
    processed_key, failed_key, processed_day, failed_day = stat_keys(now)
    for total, day, n in ((processed_key, processed_day, counts[0]),
                          (failed_key, failed_day, counts[1])):
        pipe.incrby(total, n)
        pipe.incrby(day, n)
        pipe.expire(day, STAT_DAY_TTL)

"""Periodic jobs on Redis: claim each (schedule, tick) and push its job in one Lua step.

Redis keys (ours; Sidekiq ignores them):
    jobrunner:periodic               HASH  schedule key -> JSON {worker, cron, args, timezone,
                                           first_seen}; first_seen is the catch-up floor
    jobrunner:periodic:seen          ZSET  schedule key, score = last refresh by a live
                                           supervisor; entries older than STALE_GRACE are
                                           removed together with their HASH field
    jobrunner:periodic:ticks:<key>   ZSET  claimed ticks (member and score: epoch seconds);
                                           trimmed to CLAIM_RETENTION on every claim and
                                           expiring CLAIM_RETENTION after the last one
The job is a normal client push (``client_payloads``: SADD queues + LPUSH queue:<q>) with one extra
key, ``"periodic": {"schedule": <key>, "cron": <cron>, "tick": <epoch seconds>}``.
"""

import datetime
import json
import logging
import time

import redis

from jobrunner.schedule import CLAIM_RETENTION, STALE_GRACE, Planner, next_run, schedules_for
from jobrunner.job import encode_args
from jobrunner.backends.sidekiq.payload import (client_payloads, load_item, queue_key,
                                                retry_option, wire)

log = logging.getLogger("jobrunner.periodic")

SCHEDULES = "jobrunner:periodic"
SEEN = "jobrunner:periodic:seen"
TICKS_PREFIX = "jobrunner:periodic:ticks:"

#: Claim one tick and push its job, or do nothing if the tick is already claimed.
#: KEYS[1] the schedule's ticks ZSET, KEYS[2] ``queue:<q>``, KEYS[3] ``queues``
#: ARGV[1] tick, ARGV[2] prune cutoff, ARGV[3] TTL seconds, ARGV[4] queue name, ARGV[5] job
#: Returns 1 when this call claimed the tick, 0 when someone already had.
CLAIM = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[4])
redis.call('LPUSH', KEYS[2], ARGV[5])
return 1
"""

#: Mark schedules live; keep the first writer's metadata (and so its first_seen).
#: KEYS[1] ``jobrunner:periodic``, KEYS[2] ``jobrunner:periodic:seen``
#: ARGV[1] now, then pairs: schedule key, metadata JSON. Returns the stored JSON per key.
REFRESH = """
local stored = {}
for i = 2, #ARGV, 2 do
  redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[2], ARGV[1], ARGV[i])
  stored[#stored + 1] = redis.call('HGET', KEYS[1], ARGV[i])
end
return stored
"""

#: Forget schedules no live supervisor refreshed since the cutoff.
#: KEYS[1] ``jobrunner:periodic``, KEYS[2] ``jobrunner:periodic:seen``; ARGV[1] cutoff.
#: Returns the number forgotten.
FORGET_STALE = """
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1])
for _, key in ipairs(stale) do
  redis.call('ZREM', KEYS[2], key)
  redis.call('HDEL', KEYS[1], key)
end
return #stale
"""


def ticks_key(schedule_key):
    return TICKS_PREFIX + schedule_key


class SidekiqPeriodic:
    """Fires the sidekiq schedules of one supervisor over the housekeeper's client."""

    def __init__(self, client, schedules, clock=time.time):
        self.client = client
        self.planner = Planner(schedules)
        self.clock = clock
        self._claim = client.register_script(CLAIM)
        self._refresh = client.register_script(REFRESH)
        self._forget = client.register_script(FORGET_STALE)

    @classmethod
    def for_registry(cls, client, registry):
        return cls(client, schedules_for(registry, "sidekiq"))

    def tick(self):
        """Claim and push every due tick; a no-op without schedules."""
        if not self.planner.schedules:
            return
        now = self.clock()
        if self.planner.refresh_due(now):
            self.planner.refreshed(now, self.refresh(now))
            self.forget_stale(now)
        failed = set()
        for schedule, tick in self.planner.due(now):
            if not self._claim_logged(schedule, tick, now):
                failed.add(schedule.key)
        self.planner.passed(now, failed)

    def refresh(self, now):
        """Mark our schedules live; returns ``{schedule key: first seen epoch}``."""
        args = [repr(now)]
        for schedule in self.planner.schedules:
            args += [schedule.key, json.dumps(dict(_described(schedule), first_seen=now))]
        stored = self._refresh(keys=[SCHEDULES, SEEN], args=[wire(a) for a in args])
        first_seen = {schedule.key: _first_seen(raw, now)
                      for schedule, raw in zip(self.planner.schedules, stored)}
        self._update_described(stored, first_seen)
        return first_seen

    def _update_described(self, stored, first_seen):
        """Rewrite stored metadata that differs from ours but for first_seen (a version that
        stored fewer fields, a worker moved to another queue), keeping its first_seen."""
        stale = {}
        for schedule, raw in zip(self.planner.schedules, stored):
            ours = dict(_described(schedule), first_seen=first_seen[schedule.key])
            text = json.dumps(ours)
            if load_item(raw)[0] != json.loads(text):
                stale[schedule.key] = text
        if stale:
            self.client.hset(SCHEDULES, mapping=stale)

    def forget_stale(self, now, grace=STALE_GRACE):
        """Remove the metadata of schedules no live supervisor refreshed for ``grace``."""
        return self._forget(keys=[SCHEDULES, SEEN], args=[repr(now - grace)])

    def claim(self, schedule, tick, now):
        """Claim ``tick`` of ``schedule`` and push its job in one step; True if we won it."""
        periodic = {"schedule": schedule.key, "cron": schedule.cron, "tick": int(tick)}
        _, (payload,) = client_payloads(
            schedule.worker, [encode_args(schedule.worker.name, schedule.args)], now,
            extra={"periodic": periodic})
        queue = schedule.worker.queue
        args = [int(tick), repr(now - CLAIM_RETENTION), int(CLAIM_RETENTION), queue, payload]
        keys = [ticks_key(schedule.key), queue_key(queue), "queues"]
        return bool(self._claim(keys=[wire(k) for k in keys], args=[wire(a) for a in args]))

    def _claim_logged(self, schedule, tick, now):
        """Claim one tick; False if it failed and should be tried again next pass."""
        try:
            if self.claim(schedule, tick, now):
                log.info("periodic %s (%s): enqueued the tick of %s", schedule.worker.name,
                         schedule.cron, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(tick)))
            return True
        except redis.ResponseError as exc:
            # A server-side refusal for one schedule must not stop the others or the heartbeat;
            # connection errors propagate so that the housekeeper reconnects.
            log.error("periodic %s (%s): claim failed: %s", schedule.worker.name,
                      schedule.cron, exc)
            return False


def _first_seen(raw, default):
    try:
        return float(json.loads(raw)["first_seen"])
    except (TypeError, ValueError, KeyError):
        return default


def _described(schedule):
    """What is stored of ``schedule``: its ``describe()``, with the ``retry`` its pushes write
    (none for a stub of a Ruby class, whose own retry option must apply)."""
    return dict(schedule.describe(), retry=retry_option(schedule.worker))


def stored_schedule(client, key):
    """The stored metadata of schedule ``key`` (``Schedule.describe()`` and first_seen)."""
    return load_item(client.hget(SCHEDULES, key))[0]


def _text(value):
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def list_schedules(client, now=None):
    """Stored sidekiq schedules as dicts {worker, cron, args, timezone, next_run, last_run}.

    Works with clients that decode replies or not. ``next_run`` / ``last_run`` are aware UTC
    datetimes (``last_run``: the latest claimed tick, None when none is kept).
    """
    now = time.time() if now is None else now
    entries = []
    for key, raw in sorted(client.hgetall(SCHEDULES).items()):
        try:
            entries.append((_text(key), json.loads(_text(raw))))
        except ValueError:
            continue
    pipe = client.pipeline(transaction=False)
    for key, _ in entries:
        pipe.zrevrange(ticks_key(key), 0, 0, withscores=True)
    latest = pipe.execute() if entries else []
    listing = []
    for (key, info), last in zip(entries, latest):
        listing.append({"key": key, "worker": info.get("worker"), "cron": info.get("cron"),
                        "args": info.get("args"), "timezone": info.get("timezone", "UTC"),
                        "queue": info.get("queue"),
                        "next_run": next_run(info.get("cron"), info.get("timezone"), now),
                        "last_run": _utc(last[0][1]) if last else None})
    return sorted(listing, key=lambda s: (str(s["worker"]), str(s["cron"])))


def _utc(epoch):
    return datetime.datetime.fromtimestamp(float(epoch), datetime.timezone.utc)

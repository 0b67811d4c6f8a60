"""Runs settled per minute on Redis (``Inspector.history``): written by the housekeepers.

Key (Sidekiq ignores it):
    jobrunner:history:<minute epoch>   HASH, one field per supervisor identity: its totals for
                                       that minute so far, ``"<processed> <failed>"``; EXPIRE
                                       ``KEEP_SECONDS`` at every write.

A housekeeper writes its supervisor's recent minutes (``SupervisorSnapshot.settled``) in one
script call, only in a tick where they changed, and a count never goes down, so a snapshot
written twice, or late, changes nothing. Reading a day is one pipeline of 1,440 HVALS.
"""

import logging
import time

import redis

from jobrunner.backends.sidekiq.payload import wire

log = logging.getLogger("jobrunner.sidekiq")

PREFIX = "jobrunner:history:"
#: Seconds a minute's hash is kept: a day, and an hour to spare.
KEEP_SECONDS = 25 * 3600
#: A failing write (not a lost connection) is logged at most this often.
LOG_SECONDS = 60
#: Errors Redis answers with that mean it takes no writes now: raised, as a lost connection is.
UNAVAILABLE = (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError)

#: Store one supervisor's totals for some minutes, keeping the larger of old and new.
#: KEYS: one history hash per minute; ARGV[1] the identity, ARGV[2] the TTL, then processed
#: and failed for each key in turn.
WRITE = """
for i, key in ipairs(KEYS) do
  local processed, failed = tonumber(ARGV[2 * i + 1]), tonumber(ARGV[2 * i + 2])
  local old = redis.call('HGET', key, ARGV[1])
  if old then
    local p, f = string.match(old, '^(%d+) (%d+)$')
    processed = math.max(processed, tonumber(p) or 0)
    failed = math.max(failed, tonumber(f) or 0)
  end
  redis.call('HSET', key, ARGV[1], string.format('%d %d', processed, failed))
  redis.call('EXPIRE', key, ARGV[2])
end
return #KEYS
"""


def history_key(minute):
    return f"{PREFIX}{int(minute)}"


class HistoryWriter:
    """One supervisor's minutes, written by its housekeeper over the housekeeper's client."""

    def __init__(self, client, identity, clock=time.monotonic):
        self.identity = identity
        self.clock = clock
        self._script = client.register_script(WRITE)
        self._written = {}        # minute -> (processed, failed) as last written
        self._logged_at = None

    def write(self, settled):
        """Write the minutes of ``settled`` that changed since the last write, in one call. A
        lost connection raises (the housekeeper reconnects and the next snapshot has them all);
        an error reply (a key of another type, say) is logged, at most once a minute, and the
        write tried next tick: it must not stop the heartbeat."""
        changed = sorted((minute, counts) for minute, counts in settled.items()
                         if self._written.get(minute) != counts)
        if not changed:
            self._written = dict(settled)
            return
        args = [self.identity, KEEP_SECONDS]
        for _, (processed, failed) in changed:
            args += [int(processed), int(failed)]
        try:
            self._script(keys=[history_key(minute) for minute, _ in changed],
                         args=[wire(arg) for arg in args])
        except redis.ResponseError as exc:
            if isinstance(exc, UNAVAILABLE):
                raise
            now = self.clock()
            if self._logged_at is None or now - self._logged_at >= LOG_SECONDS:
                log.error("cannot write the per-minute history (%s*): %s", PREFIX, exc)
                self._logged_at = now
            return
        self._written = dict(settled)


def history(conn, minutes, now=None):
    """``Inspector.history`` on Redis: the last ``minutes`` minutes by this process's clock
    (the minutes are the supervisors'), zeros where no hash is."""
    last = int((time.time() if now is None else now) // 60) * 60
    window = [last - 60 * back for back in range(max(0, int(minutes)) - 1, -1, -1)]
    pipe = conn.pipeline(transaction=False)
    for minute in window:
        pipe.hvals(history_key(minute))
    entries = []
    for minute, values in zip(window, pipe.execute() if window else []):
        processed = failed = 0
        for value in values:
            counts = str(value).split()
            if len(counts) == 2 and all(c.isdigit() for c in counts):
                processed += int(counts[0])
                failed += int(counts[1])
        entries.append({"minute": minute, "processed": processed, "failed": failed})
    return entries

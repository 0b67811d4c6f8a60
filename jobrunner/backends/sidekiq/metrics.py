"""Per-class job metrics in the keys Sidekiq's Metrics tab reads, written by the housekeeper.

Keys (UTC; Sidekiq's own, so its Metrics tab lists jobrunner's classes beside Ruby's):

    7.x  j|%Y%m%d|%-H:%-M        HASH  ``<class>|p`` runs, ``<class>|f`` failures, ``<class>|ms``
                                       milliseconds of the runs that succeeded; EXPIRE 8 h
         <class>-%d-%H:%-M       STRING BITFIELD, 26 ``u16`` counters: the durations of the
                                       successful runs by bucket (``DURATION_BOUNDS_MS``); 8 h
    8.x  j|%y%m%d|%-H:%M         HASH  the same fields per minute; EXPIRE 8 h
         j|%y%m%d|%-H:<M div 10> HASH  the same per ten minutes, for the 24-72 hour views; 3 days
         h|<class>-%-d-%-H:%-M   STRING the histogram as in 7.x; 8 h

    jobrunner:metrics:<identity>  HASH  ours: field ``<minute>|<class>``, the totals last added
                                        to Sidekiq's keys for that minute; EXPIRE 1 h

Sidekiq adds to these keys (HINCRBY, BITFIELD INCRBY) at every beat. A supervisor's snapshot
carries its totals so far for each recent minute (``process/history.py``), so one script adds
the difference between those totals and the ones it added before, and records the new ones,
in one step: a snapshot written twice, late, or by a new housekeeper adds nothing twice. A
write costs one script call per tick in which something changed, with one entry per class and
minute that changed, however many jobs ran. The ``sidekiq_version`` setting chooses the format
(``versions.py``); 6.x has no Metrics tab, and nothing is written for it.
"""

import datetime

from jobrunner.backends.sidekiq.payload import wire

#: Seconds Sidekiq keeps the one-minute counts and the histograms, and its ten-minute counts.
SHORT_TERM = 8 * 3600
MID_TERM = 3 * 24 * 3600
#: Seconds our record of what was added is kept: longer than a snapshot carries a minute.
STORE_SECONDS = 3600
STORE_PREFIX = "jobrunner:metrics:"
#: Counters in one histogram.
BUCKETS = 26

#: Add what changed. KEYS[1] our store; then per entry, ARGV gives its field in the store,
#: the class, how many count keys it has (n), and then p, f, ms and the BUCKETS bucket
#: counts; its keys are the n count hashes and the histogram. ARGV[1], ARGV[2]: the TTLs of
#: the first count key and of the others (the histogram has the first's), ARGV[3] the store's.
ADD = """
local k, a = 2, 4
while a <= #ARGV do
  local field, class, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  local new = {}
  for i = 1, 29 do new[i] = tonumber(ARGV[a + 2 + i]) end
  local old = {}
  local stored = redis.call('HGET', KEYS[1], field)
  local i = 1
  if stored then
    for v in string.gmatch(stored, '%d+') do old[i] = tonumber(v); i = i + 1 end
  end
  local d = {}
  for j = 1, 29 do d[j] = math.max(0, new[j] - (old[j] or 0)) end
  for c = 0, n - 1 do
    local key = KEYS[k + c]
    if d[1] > 0 then redis.call('HINCRBY', key, class .. '|p', d[1]) end
    if d[2] > 0 then redis.call('HINCRBY', key, class .. '|f', d[2]) end
    if d[3] > 0 or d[1] > d[2] then
      redis.call('HINCRBY', key, class .. '|ms', d[3])
    end
    redis.call('EXPIRE', key, c == 0 and ARGV[1] or ARGV[2])
  end
  local gram = {KEYS[k + n], 'OVERFLOW', 'SAT'}
  for b = 0, 25 do
    if d[4 + b] > 0 then
      table.insert(gram, 'INCRBY'); table.insert(gram, 'u16')
      table.insert(gram, '#' .. b); table.insert(gram, d[4 + b])
    end
  end
  if #gram > 3 then
    redis.call('BITFIELD', unpack(gram))
    redis.call('EXPIRE', KEYS[k + n], ARGV[1])
  end
  redis.call('HSET', KEYS[1], field, table.concat(new, ' '))
  k = k + n + 1
  a = a + 32
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


def metric_keys(format_major, worker, minute):
    """``(count keys, histogram key)`` of ``worker``'s metrics for the minute starting at
    ``minute`` (epoch seconds), in Sidekiq ``format_major``'s names (7 or 8)."""
    t = datetime.datetime.fromtimestamp(minute, datetime.timezone.utc)
    if format_major >= 8:
        return ([f"j|{t:%y%m%d}|{t.hour}:{t.minute:02d}", f"j|{t:%y%m%d}|{t.hour}:{t.minute // 10}"],
                f"h|{worker}-{t.day}-{t.hour}:{t.minute}")
    return [f"j|{t:%Y%m%d}|{t.hour}:{t.minute}"], f"{worker}-{t:%d}-{t:%H}:{t.minute}"


class MetricsWriter:
    """One supervisor's per-class minutes, added to Sidekiq's Metrics keys (see above)."""

    def __init__(self, client, identity, version):
        self.identity = identity
        self.format = version.metrics_format
        self._script = client.register_script(ADD) if self.format else None
        self._written = {}        # (minute, worker) -> totals as last written

    def write(self, classes):
        """Add what changed in ``classes`` (``SupervisorState.classes``) since the last write;
        nothing when the version has no Metrics tab or nothing changed."""
        if self._script is None:
            return
        totals = {(int(minute), worker): _flat(counts)
                  for minute, workers in classes.items() for worker, counts in workers.items()}
        changed = sorted(item for item in totals.items() if self._written.get(item[0]) != item[1])
        if not changed:
            self._written = totals
            return
        keys = [STORE_PREFIX + self.identity]
        args = [SHORT_TERM, MID_TERM, STORE_SECONDS]
        for (minute, worker), numbers in changed:
            counts, gram = metric_keys(self.format, worker, minute)
            keys += counts + [gram]
            args += [f"{minute}|{worker}", worker, len(counts)] + numbers
        self._script(keys=[wire(key) for key in keys], args=[wire(str(a)) for a in args])
        self._written = totals


def _flat(counts):
    """``[p, f, ms, buckets]`` as the script's 29 whole numbers."""
    processed, failed, ms, buckets = counts
    buckets = (list(buckets) + [0] * BUCKETS)[:BUCKETS]
    return [int(processed), int(failed), int(ms)] + [int(b) for b in buckets]

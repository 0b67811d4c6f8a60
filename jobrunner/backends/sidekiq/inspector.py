"""Operator queries on Sidekiq's Redis keys: queue counts, processes, dead jobs and their retry.

Every function takes a redis-py client made with ``decode_responses=True`` and
``encoding_errors="surrogateescape"`` (``client()`` makes one) and returns plain dicts and
lists. The numbers are the ones Sidekiq's Web UI computes (``docs/operations.md``),
split by queue:

    waiting    LLEN queue:<q>
    scheduled  ``schedule`` entries whose ``queue`` is q
    retrying   ``retry`` entries whose ``queue`` is q (the queue the retry goes back to)
    dead       ``dead`` entries whose ``queue`` is q
    busy       jobs of q in the live processes' ``<identity>:workers`` hashes
    latency    now - ``enqueued_at`` of the oldest job in queue:<q> (0.0 when empty)

Queues are the ``queues`` set, as in Sidekiq's UI, plus any queue named only by a
schedule/retry/dead entry (Sidekiq adds a queue to the set only when a job is pushed to it).
Totals are Sidekiq's own: ZCARD of each set, the sum of LLEN, the sum of the processes'
``busy``, and ``stat:processed`` / ``stat:failed``; entries that are not job hashes (invalid
JSON in ``dead``) count in the totals only.
"""

import time

from jobrunner.backends.base import Inspector
from jobrunner.backends.sidekiq.client import make_client
from jobrunner.backends.sidekiq.payload import (encode, excerpt, load_item, queue_key,
                                                read_time, wire)
from jobrunner.backends.sidekiq.schedules import list_schedules

#: Sorted-set members read per round trip when counting or searching.
CHUNK = 1000
#: ``error_class`` of a dead entry that is not even a JSON object (docs/operations.md).
UNREADABLE = "jobrunner.Unreadable"

#: Take one entry out of ``dead`` and push it to its queue, in one step: two operators
#: retrying the same job push it once, and a job is never both dead and queued.
#: KEYS[1] dead, KEYS[2] queues, KEYS[3] queue:<q>; ARGV[1] member, ARGV[2] job, ARGV[3] q.
RETRY_DEAD = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('SADD', KEYS[2], ARGV[3])
  redis.call('LPUSH', KEYS[3], ARGV[2])
  return 1
end
return 0
"""


def client(url, timeout=5.0):
    """A client as these functions expect: text replies, payload bytes kept as they are."""
    return make_client(url, socket_timeout=timeout, connect_timeout=timeout)


def _queue_of(item):
    queue = item.get("queue") if item else None
    return queue if isinstance(queue, str) and queue else None


def _number(value, convert=int):
    try:
        return convert(value)
    except (TypeError, ValueError):
        return None


# -- stats ----------------------------------------------------------------------------------

def _members(conn, key, reverse=False):
    """``(member, score)`` pairs of a sorted set, read a chunk per round trip."""
    read = conn.zrevrange if reverse else conn.zrange
    start = 0
    while True:
        chunk = read(key, start, start + CHUNK - 1, withscores=True)
        yield from chunk
        if len(chunk) < CHUNK:
            return
        start += CHUNK


def count_by_queue(conn, key):
    """Entries of sorted set ``key`` per queue named in them."""
    counts = {}
    for raw, _ in _members(conn, key):
        queue = _queue_of(load_item(raw)[0])
        if queue:
            counts[queue] = counts.get(queue, 0) + 1
    return counts


def _latency(tail, now):
    """Sidekiq's Queue#latency: now - enqueued_at of the oldest job, 0.0 without one."""
    item = load_item(tail[0])[0] if tail else None
    enqueued = read_time(item.get("enqueued_at")) if item else None
    return round(max(0.0, now - enqueued), 3) if enqueued is not None else 0.0


def processes(conn, now=None):
    """Live processes as Sidekiq's ProcessSet sees them, pruning expired members as it does.

    Each has its heartbeat fields and ``running``: one entry per busy child (or Ruby thread)
    from ``<identity>:workers``.
    """
    now = time.time() if now is None else now
    members = sorted(conn.smembers("processes"))
    pipe = conn.pipeline(transaction=False)
    for identity in members:
        pipe.hmget(identity, "info", "busy", "beat", "quiet", "rss", "rtt_us")
        pipe.hgetall(f"{identity}:workers")
    replies = pipe.execute() if members else []
    alive, expired = [], []
    for identity, fields, work in zip(members, replies[::2], replies[1::2]):
        if fields[0] is None:
            expired.append(identity)    # its hash expired: the process is gone
        else:
            alive.append(_process(identity, fields, work))
    if expired:
        conn.srem("processes", *expired)
    return alive


def _process(identity, fields, work):
    info_raw, busy, beat, quiet, rss, rtt_us = fields
    info = load_item(info_raw)[0] or {}
    return {"identity": identity, "hostname": info.get("hostname"), "pid": info.get("pid"),
            "tag": info.get("tag") or "", "started_at": read_time(info.get("started_at")),
            "beat": _number(beat, float), "quiet": quiet == "true",
            "busy": _number(busy) or 0, "concurrency": info.get("concurrency"),
            "queues": _names(info.get("queues")), "rss_kb": _number(rss),
            "rtt_us": _number(rtt_us), "running": [_running(f, v) for f, v in sorted(work.items())]}


def _names(value):
    return [name for name in value if isinstance(name, str)] if isinstance(value, list) else []


def _running(field, value):
    entry = load_item(value)[0] or {}
    payload = entry.get("payload")
    job = (load_item(payload)[0] if isinstance(payload, str) else payload) or {}
    if not isinstance(job, dict):
        job = {}
    return {"child": field, "queue": entry.get("queue"), "worker": _worker_name(job),
            "job_id": job.get("jid"), "run_at": _number(entry.get("run_at"))}


def _worker_name(item):
    """The name Sidekiq's UI shows: ``display_class``, then ActiveJob's ``wrapped``, ``class``."""
    for key in ("display_class", "wrapped", "class"):
        if isinstance(item.get(key), str) and item[key]:
            return item[key]
    return None


def depths(conn, names, now):
    """One round trip: ``LLEN`` and Sidekiq's latency per queue, ``ZCARD`` of the three sets,
    and the ``stat:*`` totals, as a dict (also read by the metrics endpoint)."""
    pipe = conn.pipeline(transaction=False)
    for name in names:
        pipe.llen(queue_key(name))
        pipe.lrange(queue_key(name), -1, -1)
    for key in ("schedule", "retry", "dead"):
        pipe.zcard(key)
    pipe.mget("stat:processed", "stat:failed")
    *per_queue, scheduled, retrying, dead, (processed, failed) = pipe.execute()
    return {"lengths": dict(zip(names, per_queue[::2])),
            "latencies": {name: _latency(tail, now)
                          for name, tail in zip(names, per_queue[1::2])},
            "scheduled": scheduled, "retrying": retrying, "dead": dead,
            "processed": processed, "failed": failed}


def stats(conn, now=None):
    """The sidekiq section of ``jobrunner stats``: totals, one entry per queue, processes."""
    now = time.time() if now is None else now
    procs = processes(conn, now)
    names = sorted(conn.smembers("queues"))
    numbers = depths(conn, names, now)
    lengths, latencies = numbers["lengths"], numbers["latencies"]
    scheduled, retrying, dead = numbers["scheduled"], numbers["retrying"], numbers["dead"]
    processed, failed = numbers["processed"], numbers["failed"]
    by_set = {key: count_by_queue(conn, key) for key in ("schedule", "retry", "dead")}
    busy = {}
    for proc in procs:
        for job in proc["running"]:
            busy[job["queue"]] = busy.get(job["queue"], 0) + 1
    known = set(names).union(*[set(c) for c in by_set.values()])
    queues = [{"name": name, "waiting": lengths.get(name, 0),
               "scheduled": by_set["schedule"].get(name, 0),
               "retrying": by_set["retry"].get(name, 0), "dead": by_set["dead"].get(name, 0),
               "busy": busy.get(name, 0), "latency": latencies.get(name, 0.0)}
              for name in sorted(known)]
    totals = {"waiting": sum(lengths.values()), "scheduled": scheduled, "retrying": retrying,
              "dead": dead, "busy": sum(p["busy"] for p in procs),
              "processed": _number(processed) or 0, "failed": _number(failed) or 0}
    return {"totals": totals, "queues": queues, "processes": procs, "processes_note": None}


# -- dead jobs ------------------------------------------------------------------------------

def dead_entry(raw, score):
    """One ``dead`` member as ``jobrunner dead list`` shows it."""
    item, problem = load_item(raw)
    if item is None:
        # Not a job hash (Sidekiq keeps invalid JSON raw): say why, and show the start of the
        # text, its bytes that are not UTF-8 escaped.
        return {"backend": "sidekiq", "queue": None, "id": None, "msg_id": None,
                "worker": None, "args": [excerpt(raw)], "error_class": UNREADABLE,
                "error_message": problem, "attempts": None, "died_at": float(score)}
    count = item.get("retry_count")
    runs = count + 1 if isinstance(count, int) and not isinstance(count, bool) else 1
    jid = item.get("jid")
    return {"backend": "sidekiq", "queue": _queue_of(item),
            "id": jid if isinstance(jid, str) else None, "msg_id": None,
            "worker": _worker_name(item), "args": item.get("args"),
            "error_class": item.get("error_class"), "error_message": item.get("error_message"),
            "attempts": max(1, runs), "died_at": float(score)}


def _dead(conn, queue=None, ids=None, limit=None):
    """``(entry, raw member)`` pairs of ``dead``, newest first, filtered as ``dead_jobs``."""
    wanted = None if ids is None else {str(i) for i in ids}
    found = []
    for raw, score in _members(conn, "dead", reverse=True):
        entry = dead_entry(raw, score)
        if queue is not None and entry["queue"] != queue:
            continue
        if wanted is not None and entry["id"] not in wanted:
            continue
        found.append((entry, raw))
        if limit and len(found) >= limit:
            break
    return found


def dead_jobs(conn, queue=None, ids=None, limit=None):
    """Dead jobs, newest first; only ``queue``'s, only the jids in ``ids``, at most ``limit``."""
    return [entry for entry, _ in _dead(conn, queue, ids, limit)]


def revived(item, now):
    """The job hash to push when a dead job is retried.

    Like the Web UI's "retry now" it keeps every field (jid, created_at, error fields,
    unknown keys) and sets a new ``enqueued_at``. Unlike it, it removes ``retry_count`` and
    ``retried_at`` instead of subtracting 1 from ``retry_count``: a dead job's count is
    already at its limit, so Sidekiq's way gives one more run only, where an operator
    retrying after a fix expects the job's retries again (and pgmq's retry gives them).
    """
    item = dict(item)
    item.pop("retry_count", None)
    item.pop("retried_at", None)
    item["queue"] = _queue_of(item) or "default"
    item["enqueued_at"] = now
    return item


def retry_dead(conn, queue=None, ids=None, now=None):
    """Push dead jobs back to their queues; ``ids`` None means all (of ``queue``, if given).

    Returns ``(retried entries, skipped entries with a "reason")``; entries that another
    operator took out first are in neither.
    """
    now = time.time() if now is None else now
    script = conn.register_script(RETRY_DEAD)
    retried, skipped = [], []
    for entry, raw in _dead(conn, queue, ids):
        item = load_item(raw)[0]
        if item is None:
            skipped.append(dict(entry, reason="not a job hash; it cannot run"))
            continue
        job = revived(item, now)
        keys = ["dead", "queues", queue_key(job["queue"])]
        if script(keys=keys, args=[wire(raw), wire(encode(job)), job["queue"]]):
            retried.append(entry)
    return retried, skipped


def delete_dead(conn, queue=None, ids=None):
    """Remove dead jobs; ``ids`` None means all (of ``queue``, if given). Returns the entries
    removed."""
    removed = []
    for entry, raw in _dead(conn, queue, ids):
        if conn.zrem("dead", wire(raw)):
            removed.append(entry)
    return removed


def dead_action(conn, action, ids=None, queue=None):
    """``Inspector.dead_action`` on Redis: a retried job goes back to its queue, same jid."""
    if action == "retry":
        retried, skipped = retry_dead(conn, queue=queue, ids=ids)
        return [dict(e, new_msg_id=None) for e in retried], skipped, []
    return delete_dead(conn, queue=queue, ids=ids), [], []


class SidekiqInspector(Inspector):
    """The Sidekiq ``Inspector``: the functions above on one client."""

    def __init__(self, conn, health):
        self.conn = conn
        self._health = health          # () -> {"version", "warnings"}, from the backend

    def stats(self):
        return stats(self.conn)

    def depths(self, queues):
        numbers = depths(self.conn, list(queues), time.time())
        rows = {queue: {"waiting": numbers["lengths"][queue],
                        "latency": numbers["latencies"][queue]} for queue in queues}
        return {"queues": rows,
                "totals": {key: numbers[key] for key in ("scheduled", "retrying", "dead")}}

    def schedules(self):
        return list_schedules(self.conn)

    def dead_jobs(self, queue=None, ids=None, limit=None):
        return dead_jobs(self.conn, queue=queue, ids=ids, limit=limit)

    def dead_action(self, action, ids=None, queue=None):
        return dead_action(self.conn, action, ids=ids, queue=queue)

    def health(self):
        return self._health(self.conn)

    def close(self):
        self.conn.close()

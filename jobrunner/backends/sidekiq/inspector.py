"""Operator views of Sidekiq's Redis keys: queue counts, processes; the ``SidekiqInspector``.

The sorted sets' jobs and their actions are in ``sidekiq/sets.py``, ``find_job`` in
``sidekiq/lookup.py``, pausing, purging and signals in ``sidekiq/control.py``, the runs per
minute in ``sidekiq/history.py``.

Every function takes a redis-py client made with ``decode_responses=True`` and
``encoding_errors="surrogateescape"`` (``client()`` makes one) and returns plain dicts and
lists. The numbers are the ones Sidekiq's Web UI computes (``docs/operations.md``),
split by queue:

    waiting    LLEN queue:<q>
    scheduled  ``schedule`` entries whose ``queue`` is q
    retrying   ``retry`` entries whose ``queue`` is q (the queue the retry goes back to)
    dead       ``dead`` entries whose ``queue`` is q
    busy       jobs of q in the live processes' running-job hashes (``<identity>:workers``
               of 6.4, ``<identity>:work`` of 7.0 on; jobrunner writes both)
    latency    now - ``enqueued_at`` of the oldest job in queue:<q> (0.0 when empty)
    paused     q is in ``jobrunner:paused``

Queues are the ``queues`` set, as in Sidekiq's UI, plus the paused ones and any queue named
only by a schedule/retry/dead entry (Sidekiq adds a queue to the set only when a job is
pushed to it).
Totals are Sidekiq's own: ZCARD of each set, the sum of LLEN, the sum of the processes'
``busy``, and ``stat:processed`` / ``stat:failed``; entries that are not job hashes (invalid
JSON in ``dead``) count in the totals only.
"""

import time

from jobrunner.backends.inspector import Inspector
from jobrunner.backends.sidekiq import control, lookup, sets
from jobrunner.backends.sidekiq.client import make_client
from jobrunner.backends.sidekiq.entries import queue_of_item, worker_name
from jobrunner.backends.sidekiq.history import history
from jobrunner.backends.sidekiq.heartbeat import work_keys
from jobrunner.backends.sidekiq.payload import load_item, queue_key, read_time
from jobrunner.backends.sidekiq.enqueue import SidekiqEnqueuer
from jobrunner.backends.sidekiq.schedules import list_schedules, stored_schedule
# The dead set's functions, by the names ``jobrunner dead`` and its tests have used.
from jobrunner.backends.sidekiq.sets import dead_jobs, delete_dead, retry_dead

__all__ = ["SidekiqInspector", "client", "dead_jobs", "delete_dead", "depths", "processes",
           "retry_dead", "stats"]


def client(url, timeout=5.0):
    """A client as these functions expect: text replies, payload bytes kept as they are."""
    return make_client(url, socket_timeout=timeout, connect_timeout=timeout)


def _number(value, convert=int):
    try:
        return convert(value)
    except (TypeError, ValueError):
        return None


# -- stats ----------------------------------------------------------------------------------

def count_by_queue(conn, key):
    """Entries of sorted set ``key`` per queue named in them."""
    counts = {}
    for raw, _ in sets.members(conn, key):
        queue = queue_of_item(load_item(raw)[0])
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
    from its running-job hashes, whichever its version writes (``work_keys``).
    """
    now = time.time() if now is None else now
    members = sorted(conn.smembers("processes"))
    pipe = conn.pipeline(transaction=False)
    for identity in members:
        pipe.hmget(identity, "info", "busy", "beat", "quiet", "rss", "rtt_us", "concurrency")
        for key in work_keys(identity):
            pipe.hgetall(key)
    replies = pipe.execute() if members else []
    alive, expired = [], []
    for identity, fields, old, new in zip(members, replies[::3], replies[1::3], replies[2::3]):
        if fields[0] is None:
            expired.append(identity)    # its hash expired: the process is gone
        else:
            alive.append(_process(identity, fields, {**old, **new}))
    if expired:
        conn.srem("processes", *expired)
    return alive


def _process(identity, fields, work):
    info_raw, busy, beat, quiet, rss, rtt_us, concurrency = fields
    info = load_item(info_raw)[0] or {}
    # 8.1.2+ keeps the thread count in the hash itself, and reads it there first
    concurrency = _number(concurrency)
    if concurrency is None:
        concurrency = info.get("concurrency")
    return {"identity": identity, "hostname": info.get("hostname"), "pid": info.get("pid"),
            "tag": info.get("tag") or "", "started_at": read_time(info.get("started_at")),
            "beat": _number(beat, float), "quiet": quiet == "true",
            "busy": _number(busy) or 0, "concurrency": concurrency,
            "queues": _queue_names(info), "version": info.get("version"), "rss_kb": _number(rss),
            "rtt_us": _number(rtt_us), "running": [_running(f, v) for f, v in sorted(work.items())]}


def _names(value):
    return [name for name in value if isinstance(name, str)] if isinstance(value, list) else []


def _queue_names(info):
    """A process's queues as 8.x reads them: from its ``capsules`` when it has them (each
    capsule's ``weights`` names its queues), else from ``queues``."""
    capsules = info.get("capsules")
    if isinstance(capsules, dict) and capsules:
        names = [name for capsule in capsules.values() if isinstance(capsule, dict)
                 and isinstance(capsule.get("weights"), dict) for name in capsule["weights"]]
        return list(dict.fromkeys(name for name in names if isinstance(name, str)))
    return _names(info.get("queues"))


def _running(field, value):
    entry = load_item(value)[0] or {}
    payload = entry.get("payload")
    job = (load_item(payload)[0] if isinstance(payload, str) else payload) or {}
    if not isinstance(job, dict):
        job = {}
    return {"child": field, "queue": entry.get("queue"), "worker": worker_name(job),
            "job_id": job.get("jid"), "args": job.get("args"),
            "run_at": _number(entry.get("run_at"))}


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
    paused = set(control.paused_queues(conn))
    # A paused queue is listed even when empty and unknown to Sidekiq, so that it shows.
    names = sorted(set(conn.smembers("queues")) | paused)
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
               "busy": busy.get(name, 0), "latency": latencies.get(name, 0.0),
               "paused": name in paused}
              for name in sorted(known)]
    totals = {"waiting": sum(lengths.values()), "scheduled": scheduled, "retrying": retrying,
              "dead": dead, "busy": sum(p["busy"] for p in procs),
              "processed": _number(processed) or 0, "failed": _number(failed) or 0}
    return {"totals": totals, "queues": queues, "processes": procs, "processes_note": None}


class SidekiqInspector(Inspector):
    """The Sidekiq ``Inspector``: the functions of this module, ``sets``, ``lookup`` and
    ``control`` on one client."""

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

    def stored_schedule(self, key):
        return stored_schedule(self.conn, key)

    def send_now(self, worker, encoded_args):
        return SidekiqEnqueuer.push(worker, self.conn, [encoded_args])[0]

    def jobs(self, kind, queue=None, ids=None, worker=None, error=None, limit=None, offset=0):
        return sets.list_jobs(self.conn, kind, queue=queue, ids=ids, worker=worker,
                              error=error, limit=limit, offset=offset)

    def job_action(self, kind, action, ids=None, queue=None):
        return sets.job_action(self.conn, kind, action, ids=ids, queue=queue)

    def find_job(self, job_id):
        return lookup.find_job(self.conn, job_id)

    def processes(self):
        return processes(self.conn)

    def signal(self, identity, action):
        return control.signal(self.conn, identity, action)

    def queue_action(self, action, queue):
        return control.queue_action(self.conn, action, queue)

    def paused_queues(self):
        return control.paused_queues(self.conn)

    def history(self, minutes=60):
        return history(self.conn, minutes)

    def health(self):
        return self._health(self.conn)

    def close(self):
        self.conn.close()

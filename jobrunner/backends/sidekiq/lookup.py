"""``find_job`` on Redis: every place a jid can be, from the queues to the live processes.

Where it looks, in the order the entries come back:

    waiting    ``queue:<q>`` of every queue in ``queues``, a chunk per round trip
    scheduled  ``schedule``, retrying ``retry``, dead ``dead``: ZSCAN with MATCH, as
               Sidekiq's own ``SortedSet#find_job`` does, so Redis filters the members
    running    the in-flight lists of the reliable fetch (``jobrunner:inflight``), and the
               running-job hashes of live processes (basic fetch, Ruby processes): 6.4's
               ``<identity>:workers`` and 7.0+'s ``<identity>:work``

Every place is read as text first: only members that contain the jid as JSON writes it are
decoded, so a long queue costs its transfer, not a JSON decode per job.
"""

import binascii
import re
import zlib

from jobrunner.backends.sidekiq.entries import jid_of, job_entry
from jobrunner.backends.sidekiq.payload import (INFLIGHT_SET, child_of_inflight_key,
                                                decode_backtrace, encode, inflight_key,
                                                load_item, owner_identity, queue_key,
                                                read_time)
from jobrunner.backends.sidekiq.heartbeat import work_keys
from jobrunner.backends.sidekiq.sets import CHUNK

#: Characters with a meaning in a Redis MATCH pattern.
_GLOB = re.compile(r"([*?\[\]\\])")


def find_job(conn, job_id):
    """``Inspector.find_job``: an entry per copy of ``job_id`` found, waiting ones first."""
    job_id = str(job_id)
    # The jid as it appears inside job JSON (what Ruby's and our encoders write).
    needle = encode(job_id)[1:-1]
    found = _waiting(conn, job_id, needle)
    for state, key in (("scheduled", "schedule"), ("retrying", "retry")):
        found += _in_set(conn, state, key, job_id, needle)
    found += _running(conn, job_id, needle)
    found += _in_set(conn, "dead", "dead", job_id, needle)
    return found


def found_entry(state, raw, score=None, process=None):
    """A job entry with what ``find_job`` adds: enqueued_at, backtrace and process."""
    entry = job_entry(state, raw, score)
    item = load_item(raw)[0] or {}
    entry.update(enqueued_at=read_time(item.get("enqueued_at")),
                 backtrace=stored_backtrace(item.get("error_backtrace")), process=process)
    return entry


def stored_backtrace(value):
    """The lines of an ``error_backtrace`` value; [] when there is none or it is unreadable
    (a find shows what it can of a job rather than failing on one field)."""
    if not value:
        return []
    try:
        lines = decode_backtrace(value)
    except (binascii.Error, zlib.error, ValueError, TypeError):
        return []
    return [str(line) for line in lines] if isinstance(lines, list) else []


def _is_it(raw, job_id, needle):
    return needle in raw and jid_of(load_item(raw)[0]) == job_id


def _waiting(conn, job_id, needle):
    found, seen = [], set()
    for name in sorted(conn.smembers("queues")):
        start = 0
        while True:
            chunk = conn.lrange(queue_key(name), start, start + CHUNK - 1)
            for raw in chunk:
                # A push while we page shifts the list towards its tail, so a job can show
                # in two chunks (never in none): report it once.
                if (name, raw) not in seen and _is_it(raw, job_id, needle):
                    seen.add((name, raw))
                    found.append(found_entry("waiting", raw))
            if len(chunk) < CHUNK:
                break
            start += CHUNK
    return found


def _in_set(conn, state, key, job_id, needle):
    pattern = "*" + _GLOB.sub(r"\\\1", needle) + "*"
    seen = {}
    for raw, score in conn.zscan_iter(key, match=pattern, count=CHUNK):
        if raw not in seen and _is_it(raw, job_id, needle):
            seen[raw] = score           # a SCAN may return a member twice
    return [found_entry(state, raw, score) for raw, score in seen.items()]


def _running(conn, job_id, needle):
    """The copies held in in-flight lists, each named by the supervisor that owns the list,
    then those only a live process's running-job hash names (it holds no in-flight list)."""
    keys = sorted(conn.smembers(INFLIGHT_SET))
    pipe = conn.pipeline(transaction=False)
    for key in keys:
        pipe.lrange(key, 0, -1)
    found, holding = [], set()
    for key, held in zip(keys, pipe.execute() if keys else []):
        for raw in held:
            if _is_it(raw, job_id, needle):
                holding.add(key)
                identity = owner_identity(child_of_inflight_key(key))
                found.append(found_entry("running", raw, process=identity))
    for identity, field, raw in _working(conn):
        # The heartbeat names a child by its pid (else by its whole id): a job there whose
        # child's in-flight list holds it too is the same run, already reported.
        lists = {inflight_key(f"{identity}:{field}"), inflight_key(field)}
        if not lists & holding and _is_it(raw, job_id, needle):
            found.append(found_entry("running", raw, process=identity))
    return found


def _working(conn):
    """``(identity, field, raw payload)`` of every job in the running-job hashes of a live
    process (a jobrunner supervisor writes the same entries in both: they count once)."""
    identities = sorted(conn.smembers("processes"))
    pipe = conn.pipeline(transaction=False)
    for identity in identities:
        pipe.exists(identity)
        for key in work_keys(identity):
            pipe.hgetall(key)
    replies = pipe.execute() if identities else []
    for identity, alive, old, new in zip(identities, replies[::3], replies[1::3],
                                         replies[2::3]):
        for field, value in sorted({**old, **new}.items()) if alive else ():
            payload = (load_item(value)[0] or {}).get("payload")
            if isinstance(payload, dict):
                payload = encode(payload)
            if isinstance(payload, str):
                yield identity, field, payload

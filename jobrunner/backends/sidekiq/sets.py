"""The ``schedule``, ``retry`` and ``dead`` sorted sets for operators: list, run, delete, kill.

Each set's score is when its job runs (``schedule``, ``retry``) or when it died (``dead``).
An action moves each member with one Lua call that ZREMs it first (``scripts.PROMOTE``, the
poller's own step), so two operators acting on the same job at once move it once, and a job
is never both in a set and in its queue.
"""

import itertools
import time

from jobrunner.backends.inspector import ACTIONS, KILLED, KILLED_MESSAGE
from jobrunner.backends.listing import matches
from jobrunner.backends.sidekiq.entries import job_entry, queue_of_item
from jobrunner.backends.sidekiq.payload import (DEAD_TIMEOUT, due_member, encode, load_item,
                                                queue_key, wire)
from jobrunner.backends.sidekiq.scripts import PROMOTE

#: The sorted set of each kind of ``Inspector.jobs``.
SET_KEYS = {"scheduled": "schedule", "retrying": "retry", "dead": "dead"}
#: Members read, or moves sent, per round trip.
CHUNK = 1000
#: Why ``run`` skips a member that is not a job hash.
CANNOT_RUN = "not a job hash; it cannot run"


def members(conn, key, reverse=False):
    """``(member, score)`` pairs of a sorted set, read a chunk per round trip."""
    read = conn.zrevrange if reverse else conn.zrange
    start = 0
    while True:
        chunk = read(key, start, start + CHUNK - 1, withscores=True)
        yield from chunk
        if len(chunk) < CHUNK:
            return
        start += CHUNK


def _in_order(conn, kind):
    """``(entry, member)`` of ``kind``'s set: dead newest first, the others soonest due
    first, and entries of one score by job id (Redis orders them by their bytes)."""
    group, score_of_group = [], None
    for raw, score in members(conn, SET_KEYS[kind], reverse=kind == "dead"):
        if group and score != score_of_group:
            yield from sorted(group, key=_by_id)
            group = []
        group.append((job_entry(kind, raw, score), raw))
        score_of_group = score
    yield from sorted(group, key=_by_id)


def _by_id(pair):
    return pair[0]["id"] or ""


def select(conn, kind, queue=None, ids=None, worker=None, error=None):
    """``(entry, member)`` of ``kind`` that pass the filters of ``Inspector.jobs``."""
    if kind not in SET_KEYS:
        raise ValueError(f"no jobs of kind {kind!r}; one of {tuple(SET_KEYS)}")
    wanted = None if ids is None else {str(i) for i in ids}
    if wanted is not None and not wanted:
        return
    for entry, raw in _in_order(conn, kind):
        if matches(entry, queue, wanted, worker, error or None):
            yield entry, raw


def list_jobs(conn, kind, queue=None, ids=None, worker=None, error=None, limit=None, offset=0):
    """``Inspector.jobs``: the entries of ``kind``, filtered, then ``offset`` and ``limit``."""
    stop = None if limit is None else offset + limit
    chosen = itertools.islice(select(conn, kind, queue, ids, worker, error), offset, stop)
    return [entry for entry, _ in chosen]


# -- actions --------------------------------------------------------------------------------

def revived(item, now):
    """The job hash to push when a dead job is run again.

    Like the Web UI's "retry now" it keeps every field (jid, created_at, error fields,
    unknown keys) and sets a new ``enqueued_at``. Unlike it, it removes ``retry_count`` and
    ``retried_at`` instead of subtracting 1 from ``retry_count``: a dead job's count is
    already at its limit, so Sidekiq's way gives one more run only, where an operator
    retrying after a fix expects the job's retries again (and pgmq's retry gives them).
    """
    item = dict(item)
    item.pop("retry_count", None)
    item.pop("retried_at", None)
    item["queue"] = queue_of_item(item) or "default"
    item["enqueued_at"] = now
    return item


def killed(raw, now):
    """The ``dead`` member for a member an operator kills: unchanged when it failed before
    (its error stays), else marked as killed; text that is not a job hash stays as it is."""
    item, _ = load_item(raw)
    if item is None or item.get("error_class"):
        return raw
    return encode(dict(item, error_class=KILLED, error_message=KILLED_MESSAGE, failed_at=now))


def _move(kind, action, raw, now):
    """``(member to write, queue)`` for ``action`` on one member: queue "" means ``dead``,
    None that it cannot run."""
    if action == "kill":
        return killed(raw, now), ""
    item, _ = load_item(raw)
    if item is None:
        return None, None
    if kind == "dead":
        job = revived(item, now)
        return encode(job), job["queue"]
    # A retrying job keeps its retry_count, so its run now is its next attempt, as when the
    # poller moves it; a scheduled one has none and runs as its first.
    queue, member = due_member(raw, now)
    return member, queue


def job_action(conn, kind, action, ids=None, queue=None, now=None):
    """``Inspector.job_action`` on Redis: returns (done, skipped, []); ids are jids only, so
    none is ambiguous. Members another operator moved first are in neither list."""
    if action not in ACTIONS.get(kind, ()):
        raise ValueError(f"{kind} jobs cannot {action!r}; they can {ACTIONS.get(kind, ())}")
    now = time.time() if now is None else now
    chosen = list(select(conn, kind, queue=queue, ids=ids))
    if action == "delete":
        return _delete(conn, SET_KEYS[kind], chosen), [], []
    moves, skipped = [], []
    for entry, raw in chosen:
        member, target = _move(kind, action, raw, now)
        if target is None:
            skipped.append(dict(entry, reason=CANNOT_RUN))
        else:
            moves.append((entry, raw, member, target))
    done = _promote(conn, SET_KEYS[kind], moves, now)
    if kind == "dead" and action == "run":
        done = [dict(entry, new_msg_id=None) for entry in done]    # pgmq's field; jid stays
    return done, skipped, []


def _delete(conn, key, chosen):
    removed = []
    for start in range(0, len(chosen), CHUNK):
        batch = chosen[start:start + CHUNK]
        pipe = conn.pipeline(transaction=False)
        for _, raw in batch:
            pipe.zrem(key, wire(raw))
        removed += [entry for (entry, _), gone in zip(batch, pipe.execute()) if gone]
    return removed


def _promote(conn, key, moves, now):
    """Run PROMOTE once per move (a chunk of them per round trip); the entries it moved."""
    script = conn.register_script(PROMOTE)
    cutoff = "(" + repr(float(now - DEAD_TIMEOUT))
    moved = []
    for start in range(0, len(moves), CHUNK):
        batch = moves[start:start + CHUNK]
        pipe = conn.pipeline(transaction=False)
        for _, raw, member, target in batch:
            keys = [key, "queues", "dead", queue_key(target) if target else "dead"]
            args = [repr(float(now)), cutoff, raw, member, target]
            script(keys=[wire(k) for k in keys], args=[wire(a) for a in args], client=pipe)
        moved += [entry for (entry, *_), done in zip(batch, pipe.execute()) if done]
    return moved


# -- the dead set as `jobrunner dead` used it -------------------------------------------------

def dead_jobs(conn, queue=None, ids=None, limit=None):
    """Dead jobs, newest first; only ``queue``'s, only the jids in ``ids``, at most ``limit``."""
    return list_jobs(conn, "dead", queue=queue, ids=ids, limit=limit)


def retry_dead(conn, queue=None, ids=None, now=None):
    """Push dead jobs back to their queues with their retries again: (entries, skipped)."""
    done, skipped, _ = job_action(conn, "dead", "run", ids=ids, queue=queue, now=now)
    return done, skipped


def delete_dead(conn, queue=None, ids=None):
    """Remove dead jobs; ``ids`` None means all (of ``queue``, if given)."""
    return job_action(conn, "dead", "delete", ids=ids, queue=queue)[0]

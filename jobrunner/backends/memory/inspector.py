"""Operator views and actions on a ``MemoryStore``: counts by state, dead jobs, schedules.

The shapes are those of ``jobrunner stats|dead|check --json``, as for the other backends:

    waiting    in ``queues[q]``
    scheduled  in ``later``, never failed (sent with a delay)
    retrying   in ``later`` after a failed run
    busy       leased by a child
    dead       in ``dead``
"""

from __future__ import annotations

import datetime
from typing import Sequence

from jobrunner.schedule import next_run
from jobrunner.backends.base import Inspector
from jobrunner.backends.memory.payload import decode
from jobrunner.backends.memory.store import NAME, MemoryStore, Message


#: ``error_class`` of a dead job whose body cannot be decoded (docs/operations.md).
UNREADABLE = "jobrunner.Unreadable"
#: Characters of an unreadable body shown in its ``args``.
EXCERPT_CHARS = 1000


def dead_entry(message: Message) -> dict:
    """One dead job as ``jobrunner dead list`` shows it; a body that is not JSON is shown as
    unreadable, with why and an excerpt of it."""
    item, problem = decode(message.body)
    item = item or {}
    error = message.error or {}
    entry = {"backend": NAME, "queue": message.queue,
             "id": item.get("id") if isinstance(item.get("id"), str) else None,
             "msg_id": message.msg_id, "worker": item.get("worker_name"),
             "args": item.get("args"), "error_class": error.get("error_class"),
             "error_message": error.get("error_message"), "attempts": message.failures,
             "died_at": message.died_at}
    if problem is not None and problem.startswith("invalid JSON"):
        reason = problem
        if entry["error_message"] and entry["error_message"] != reason:
            reason += f" (it died with {entry['error_class']}: {entry['error_message']})"
        body = str(message.body)
        cut = body if len(body) <= EXCERPT_CHARS else body[:EXCERPT_CHARS] + "…"
        entry.update(worker=None, args=[cut], error_class=UNREADABLE, error_message=reason)
    return entry


def _utc(epoch: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)


class MemoryInspector(Inspector):
    """The memory ``Inspector``: reads and dead-job actions on the shared store."""

    def __init__(self, store: MemoryStore):
        self.store = store

    def _queue_stats(self, queue: str, now: float) -> dict:
        store = self.store
        waiting = store.queues.get(queue, [])
        later = [m for m in store.later if m.queue == queue]
        oldest = waiting[0].ready_at if waiting else None
        return {"name": queue, "waiting": len(waiting),
                "scheduled": sum(1 for m in later if not m.failures),
                "retrying": sum(1 for m in later if m.failures),
                "dead": sum(1 for m in store.dead if m.queue == queue),
                "busy": sum(1 for m in store.leased.values() if m.queue == queue),
                "latency": round(max(0.0, now - oldest), 3) if oldest is not None else 0.0}

    def stats(self) -> dict:
        store = self.store
        with store.lock:
            store.promote()
            now = store.clock()
            names = set(store.queues).union(
                m.queue for m in store.later + store.dead + list(store.leased.values()))
            queues = [self._queue_stats(name, now) for name in sorted(names)]
            totals = {key: sum(q[key] for q in queues)
                      for key in ("waiting", "scheduled", "retrying", "dead", "busy")}
            totals.update(processed=store.processed, failed=store.failed)
        return {"totals": totals, "queues": queues, "processes": [],
                "processes_note": "the memory backend keeps no list of processes"}

    def depths(self, queues: Sequence[str]) -> dict:
        """Waiting and latency of ``queues``; totals over the whole store, as ``stats``."""
        with self.store.lock:
            self.store.promote()
            now = self.store.clock()
            rows = {queue: self._queue_stats(queue, now) for queue in queues}
            later = self.store.later
            totals = {"scheduled": sum(1 for m in later if not m.failures),
                      "retrying": sum(1 for m in later if m.failures),
                      "dead": len(self.store.dead)}
        return {"queues": {queue: {"waiting": row["waiting"], "latency": row["latency"]}
                           for queue, row in rows.items()},
                "totals": totals}

    def schedules(self) -> list[dict]:
        with self.store.lock:
            now = self.store.clock()
            stored = [(info, self.store.ticks.get(key)) for key, info in
                      self.store.schedules.items()]
        listing = [{"worker": info["worker"], "cron": info["cron"], "args": info["args"],
                    "timezone": info["timezone"],
                    "next_run": next_run(info["cron"], info["timezone"], now),
                    "last_run": _utc(max(ticks)) if ticks else None}
                   for info, ticks in stored]
        return sorted(listing, key=lambda s: (str(s["worker"]), str(s["cron"])))

    def _dead(self, queue: str | None = None,
              ids: Sequence[str] | None = None) -> list[Message]:
        """Dead messages, newest first, of ``queue`` and named by ``ids`` (job ids or
        msg_ids) when given."""
        wanted = None if ids is None else {str(i) for i in ids}
        found = []
        for message in sorted(self.store.dead, key=lambda m: (m.died_at, m.msg_id),
                              reverse=True):
            entry = dead_entry(message)
            if queue is not None and message.queue != queue:
                continue
            if wanted is not None and entry["id"] not in wanted \
                    and str(message.msg_id) not in wanted:
                continue
            found.append(message)
        return found

    def dead_jobs(self, queue: str | None = None, ids: Sequence[str] | None = None,
                  limit: int | None = None) -> list[dict]:
        with self.store.lock:
            entries = [dead_entry(message) for message in self._dead(queue, ids)]
        return entries[:limit] if limit else entries

    def dead_action(self, action: str, ids: Sequence[str] | None = None,
                    queue: str | None = None) -> tuple[list[dict], list[dict], list[str]]:
        """Retry (back to its queue, same job id and msg_id, attempts from 1) or delete.

        A body that is not a job is skipped by "retry": it could only die again. Msg_ids are
        unique in the store, so no id is ambiguous.
        """
        if action not in ("retry", "delete"):
            raise ValueError(f"dead_action: unknown action {action!r}")
        done, skipped = [], []
        with self.store.lock:
            for message in self._dead(queue, ids):
                entry = dead_entry(message)
                if action == "retry" and decode(message.body)[0] is None:
                    skipped.append(dict(entry, reason="not a job; it cannot run"))
                elif action == "retry" and self.store.revive(message):
                    done.append(dict(entry, new_msg_id=None))
                elif action == "delete" and self.store.delete_dead(message):
                    done.append(entry)
        return done, skipped, []

    def health(self) -> dict:
        return {"version": None, "warnings": []}     # no server, nothing to warn about

    def close(self) -> None:
        """Nothing to close: the store belongs to the backend."""

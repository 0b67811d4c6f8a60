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
from typing import Any, Sequence

from jobrunner.schedule import next_run
from jobrunner.backends.inspector import (ACTIONS, KILLED, KILLED_MESSAGE, PROCESS_SIGNALS,
                                          QUEUE_ACTIONS, Inspector)
from jobrunner.backends.listing import matches
from jobrunner.backends.memory.enqueue import MemoryEnqueuer
from jobrunner.backends.memory.payload import decode
from jobrunner.backends.memory.store import NAME, MemoryStore, Message


#: ``error_class`` of a dead job whose body cannot be decoded (docs/operations.md).
UNREADABLE = "jobrunner.Unreadable"
#: Characters of an unreadable body shown in its ``args``.
EXCERPT_CHARS = 1000
#: Seconds after its last heartbeat that a supervisor is taken for gone.
PROCESS_TTL = 60.0


def job_entry(message: Message, state: str) -> dict:
    """One job as the ``Inspector`` entries show it (``backends/inspector.py``); a body that is
    not JSON is shown as unreadable, with why and an excerpt of it."""
    item, problem = decode(message.body)
    item = item or {}
    error = message.error or {}
    entry = {"backend": NAME, "state": state, "queue": message.queue,
             "id": item.get("id") if isinstance(item.get("id"), str) else None,
             "msg_id": message.msg_id, "worker": item.get("worker_name"),
             "args": item.get("args"), "error_class": error.get("error_class"),
             "error_message": error.get("error_message"), "attempts": message.failures,
             "failed_at": error.get("failed_at"),
             "run_at": message.due if state in ("scheduled", "retrying") else None,
             "died_at": message.died_at if state == "dead" else None}
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
                "latency": round(max(0.0, now - oldest), 3) if oldest is not None else 0.0,
                "paused": queue in store.paused}

    def stats(self) -> dict:
        store = self.store
        with store.lock:
            store.promote()
            now = store.clock()
            names = set(store.queues).union(store.paused, (
                m.queue for m in store.later + store.dead + list(store.leased.values())))
            queues = [self._queue_stats(name, now) for name in sorted(names)]
            totals = {key: sum(q[key] for q in queues)
                      for key in ("waiting", "scheduled", "retrying", "dead", "busy")}
            totals.update(processed=store.processed, failed=store.failed)
        return {"totals": totals, "queues": queues, "processes": self.processes(),
                "processes_note": None}

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
            stored = [(key, info, self.store.ticks.get(key)) for key, info in
                      self.store.schedules.items()]
        listing = [{"key": key, "worker": info["worker"], "cron": info["cron"],
                    "args": info["args"], "timezone": info["timezone"],
                    "queue": info.get("queue"),
                    "next_run": next_run(info["cron"], info["timezone"], now),
                    "last_run": _utc(max(ticks)) if ticks else None}
                   for key, info, ticks in stored]
        return sorted(listing, key=lambda s: (str(s["worker"]), str(s["cron"])))

    def stored_schedule(self, key: str) -> dict | None:
        with self.store.lock:
            info = self.store.schedules.get(key)
            return dict(info) if info else None

    def send_now(self, worker: Any, encoded_args: str) -> str:
        return MemoryEnqueuer.push(worker, self.store, [encoded_args])[0]

    # -- jobs outside their queues ----------------------------------------------------------

    def _of_kind(self, kind: str) -> list[Message]:
        """The messages of ``kind``, in ``jobs``' order."""
        store = self.store
        store.promote()
        if kind == "dead":
            return sorted(store.dead, key=lambda m: (m.died_at, m.msg_id), reverse=True)
        if kind not in ("scheduled", "retrying"):
            raise ValueError(f"jobs: unknown kind {kind!r}")
        later = [m for m in store.later if bool(m.failures) == (kind == "retrying")]
        return sorted(later, key=lambda m: (m.due, m.msg_id))

    def _select(self, kind: str, queue: str | None = None, ids: Sequence[str] | None = None,
                worker: str | None = None, error: str | None = None) -> list[tuple]:
        wanted = None if ids is None else {str(i) for i in ids}
        pairs = [(job_entry(m, kind), m) for m in self._of_kind(kind)]
        return [(e, m) for e, m in pairs if matches(e, queue, wanted, worker, error)]

    def jobs(self, kind: str, queue: str | None = None, ids: Sequence[str] | None = None,
             worker: str | None = None, error: str | None = None, limit: int | None = None,
             offset: int = 0) -> list[dict]:
        with self.store.lock:
            entries = [e for e, _ in self._select(kind, queue, ids, worker, error)]
        entries = entries[max(0, offset):]
        return entries[:limit] if limit else entries

    def job_action(self, kind: str, action: str, ids: Sequence[str] | None = None,
                   queue: str | None = None) -> tuple[list[dict], list[dict], list[str]]:
        """See ``Inspector.job_action``. Msg_ids are unique in the store, so no id is
        ambiguous."""
        if action not in ACTIONS.get(kind, ()):
            raise ValueError(f"job_action: {action!r} is not an action on {kind} jobs")
        done, skipped = [], []
        with self.store.lock:
            for entry, message in self._select(kind, queue, ids):
                if action == "run" and decode(message.body)[0] is None:
                    skipped.append(dict(entry, reason="not a job; it cannot run"))
                elif self._act(kind, action, message):
                    done.append(dict(entry, new_msg_id=None) if kind == "dead" else entry)
        return done, skipped, []

    def _act(self, kind: str, action: str, message: Message) -> bool:
        store = self.store
        if kind == "dead":
            return store.revive(message) if action == "run" else store.delete_dead(message)
        if action == "run":
            return store.run_now(message)
        if action == "kill":
            return store.kill(message, {"error_class": KILLED, "error_message": KILLED_MESSAGE})
        return store.delete_later(message)

    def find_job(self, job_id: str) -> list[dict]:
        store = self.store
        with store.lock:
            store.promote()
            placed = [(m, "waiting") for waiting in store.queues.values() for m in waiting]
            placed += [(m, "retrying" if m.failures else "scheduled") for m in store.later]
            placed += [(m, "running") for m in store.leased.values()]
            placed += [(m, "dead") for m in store.dead]
            found = []
            for message, state in placed:
                entry = job_entry(message, state)
                if job_id in (entry["id"], str(message.msg_id)):
                    error = message.error or {}
                    found.append(dict(entry, enqueued_at=message.enqueued_at,
                                      backtrace=list(error.get("backtrace") or []),
                                      process=self._running_in(message)))
        return found

    def _running_in(self, message: Message) -> str | None:
        """The supervisor whose last heartbeat lists ``message`` running."""
        for process in self.processes():
            if any(run["msg_id"] == message.msg_id for run in process["running"]):
                return process["identity"]
        return None

    # -- processes and queues -------------------------------------------------------------

    def processes(self) -> list[dict]:
        store = self.store
        with store.lock:
            now = store.clock()
            live = [dict(p) for p in store.processes.values() if now - p["beat"] < PROCESS_TTL]
            for process in live:
                process["running"] = [dict(run, args=self._args_of(run["msg_id"]))
                                      for run in process["running"]]
        return sorted(live, key=lambda p: p["identity"])

    def _args_of(self, msg_id: int | None) -> object:
        message = self.store.leased.get(msg_id) if msg_id is not None else None
        return (decode(message.body)[0] or {}).get("args") if message else None

    def signal(self, identity: str, action: str) -> bool:
        with self.store.lock:
            if identity not in {p["identity"] for p in self.processes()}:
                return False
            self.store.signals.setdefault(identity, []).append(PROCESS_SIGNALS[action])
            return True

    def queue_action(self, action: str, queue: str) -> dict:
        if action not in QUEUE_ACTIONS:
            raise ValueError(f"queue_action: unknown action {action!r}")
        purged = None
        with self.store.lock:
            if action == "pause":
                self.store.paused.add(queue)
            elif action == "resume":
                self.store.paused.discard(queue)
            else:
                purged = self.store.purge(queue)
            paused = queue in self.store.paused
        return {"queue": queue, "action": action, "paused": paused, "purged": purged}

    def paused_queues(self) -> list[str]:
        with self.store.lock:
            return sorted(self.store.paused)

    def history(self, minutes: int = 60) -> list[dict]:
        """See ``Inspector.history``: the store's minutes, by its clock."""
        last = int(self.store.clock() // 60) * 60
        window = [last - 60 * back for back in range(max(0, int(minutes)) - 1, -1, -1)]
        found = self.store.settled_in(window)
        return [{"minute": minute, "processed": found.get(minute, (0, 0))[0],
                 "failed": found.get(minute, (0, 0))[1]} for minute in window]

    def health(self) -> dict:
        return {"version": None, "warnings": []}     # no server, nothing to warn about

    def close(self) -> None:
        """Nothing to close: the store belongs to the backend."""

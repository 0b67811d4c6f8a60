"""The in-memory "server": queues, delayed and retrying jobs, leases and dead jobs, in one object.

It is the memory backend's storage and the ``conn`` its enqueuer writes to. Every role of the
backend (consumers, housekeeper, inspector) works on one shared ``MemoryStore``; it lives in
one process (a forked child works on a copy), so it suits tests and single-process use.

Where a job is, is its state:

    queues[q]  waiting: visible, the next to run first
    later      hidden until ``due``: delayed (never failed) or waiting for a retry
    leased     fetched by a child and not settled yet; ``holder`` names the child
    dead       failed for good, newest last; ``error`` says why

Beside the jobs, ``history`` keeps each supervisor's runs per minute (``record_settled``).

Every settling step names one delivery, a receipt ``(msg_id, lease)``: ``lease`` counts a
message's deliveries and only grows, so a late settle of an older delivery (after a recovery,
or from a child that lost its lease) finds the message elsewhere or re-leased and does nothing.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Callable, Iterable, Mapping, Sequence

import attr

NAME = "memory"

#: ``(msg_id, lease)``: one delivery of one message.
Receipt = tuple[int, int]
#: Seconds the per-minute history is kept: a day, and an hour to spare.
HISTORY_SECONDS = 25 * 3600


@attr.s(kw_only=True, eq=False)
class Message:
    """One job as its producer wrote it (``body``, JSON text), with the store's bookkeeping."""

    msg_id = attr.ib()
    queue = attr.ib()
    body = attr.ib()
    enqueued_at = attr.ib()
    ready_at = attr.ib(default=None)   # when it last became visible, for latency
    due = attr.ib(default=None)        # while in ``later``: when it becomes visible
    failures = attr.ib(default=0)      # runs counted as failed attempts; the next is failures + 1
    lease = attr.ib(default=0)         # deliveries so far
    holder = attr.ib(default=None)     # child id while leased
    error = attr.ib(default=None)      # the last failure: error_class, error_message, attempts...
    died_at = attr.ib(default=None)


class MemoryStore:
    """Jobs in memory, with the guarded steps the consumers, housekeeper and inspector use.

    ``clock`` gives epoch seconds; a test may pass a clock of its own to make jobs due. All
    methods hold ``lock``, a re-entrant condition that a push notifies, so a fetch waiting in
    another thread wakes up.
    """

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.lock = threading.Condition(threading.RLock())
        self.queues: dict[str, list[Message]] = {}
        self.later: list[Message] = []
        self.leased: dict[int, Message] = {}     # in fetch order
        self.dead: list[Message] = []
        self.processed = 0                        # settled runs, requeues aside
        self.failed = 0                           # of which failed
        self.schedules: dict[str, dict] = {}     # periodic: key -> describe() + first_seen
        self.ticks: dict[str, set] = {}          # periodic: key -> claimed ticks
        self.paused: set[str] = set()             # queues an operator paused
        self.processes: dict[str, dict] = {}     # supervisor identity -> its last heartbeat
        self.signals: dict[str, list[str]] = {}  # supervisor identity -> signals asked for
        # minute epoch -> supervisor identity -> (processed, failed) it settled in that minute
        self.history: dict[int, dict[str, tuple[int, int]]] = {}
        self._ids = itertools.count(1)

    # -- writing jobs ---------------------------------------------------------------------

    def push(self, queue: str, bodies: Sequence[str], at: float | None = None) -> list[int]:
        """Store one message per body, visible now or hidden until ``at``; returns msg_ids."""
        with self.lock:
            now = self.clock()
            made = [Message(msg_id=next(self._ids), queue=queue, body=body, enqueued_at=now)
                    for body in bodies]
            for message in made:
                if at is not None and at > now:
                    message.due = float(at)
                    self.later.append(message)
                else:
                    self._make_ready(message, now)
            self.lock.notify_all()
            return [message.msg_id for message in made]

    def _make_ready(self, message: Message, ready_at: float, first: bool = False) -> None:
        message.due, message.holder, message.ready_at = None, None, ready_at
        waiting = self.queues.setdefault(message.queue, [])
        if first:
            waiting.insert(0, message)
        else:
            waiting.append(message)

    def promote(self) -> None:
        """Make every hidden message whose time has come visible, oldest due first."""
        with self.lock:
            now = self.clock()
            due = sorted((m for m in self.later if m.due <= now), key=lambda m: (m.due, m.msg_id))
            for message in due:
                self.later.remove(message)
                self._make_ready(message, message.due)

    # -- fetching -------------------------------------------------------------------------

    def take(self, queues: Sequence[str], limit: int, holder: str, timeout: float = 0.0,
             woken: Callable[[], bool] = lambda: False) -> list[Message]:
        """Lease up to ``limit`` messages from the first of ``queues`` that has any, waiting
        at most ``timeout`` seconds (or until ``woken()``) when all are empty."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                self.promote()
                for queue in queues:
                    waiting = self.queues.get(queue)
                    if waiting:
                        taken = waiting[:limit]
                        del waiting[:limit]
                        return [self._lease(message, holder) for message in taken]
                remaining = deadline - time.monotonic()
                if remaining <= 0 or woken():
                    return []
                self.lock.wait(min(remaining, 0.05))   # short, to notice ``woken`` and due jobs

    def _lease(self, message: Message, holder: str) -> Message:
        message.lease += 1
        message.holder = holder
        self.leased[message.msg_id] = message
        return message

    def _held(self, receipt: Receipt) -> Message | None:
        """The leased message of this very delivery, or None when it was settled since."""
        msg_id, lease = receipt
        message = self.leased.get(msg_id)
        return message if message is not None and message.lease == lease else None

    def held_by(self, holder: str) -> list[Message]:
        """The messages ``holder`` has leased, in fetch order."""
        with self.lock:
            return [m for m in self.leased.values() if m.holder == holder]

    # -- settling (each returns whether the delivery was still leased) --------------------

    def _unlease(self, receipt: Receipt) -> Message | None:
        message = self._held(receipt)
        if message is not None:
            del self.leased[message.msg_id]
            message.holder = None
        return message

    def ack(self, receipts: Iterable[Receipt]) -> int:
        """Remove the messages that succeeded; returns how many were still leased."""
        with self.lock:
            done = [m for m in map(self._unlease, receipts) if m is not None]
            self.processed += len(done)
            return len(done)

    def retry(self, receipt: Receipt, delay: float, error: dict) -> bool:
        """Count the failed run and hide the message for ``delay`` seconds."""
        with self.lock:
            message = self._fail(receipt, error)
            if message is not None:
                message.due = self.clock() + max(0.0, float(delay))
                self.later.append(message)
            return message is not None

    def bury(self, receipt: Receipt, error: dict) -> bool:
        """Count the failed run and keep the message as dead."""
        with self.lock:
            message = self._fail(receipt, error)
            if message is not None:
                message.died_at = self.clock()
                self.dead.append(message)
            return message is not None

    def discard(self, receipt: Receipt) -> bool:
        """Drop a message that failed and asks not to be kept."""
        with self.lock:
            message = self._unlease(receipt)
            if message is not None:
                self.processed += 1
                self.failed += 1
            return message is not None

    def _fail(self, receipt: Receipt, error: dict) -> Message | None:
        message = self._unlease(receipt)
        if message is not None:
            message.failures += 1
            message.error = dict(error, attempts=message.failures, failed_at=self.clock())
            self.processed += 1
            self.failed += 1
        return message

    def requeue(self, receipts: Sequence[Receipt]) -> int:
        """Put messages back unchanged, first in their queues, in the order given."""
        with self.lock:
            back = [m for m in map(self._unlease, receipts) if m is not None]
            for message in reversed(back):
                self._make_ready(message, message.ready_at, first=True)
            self.lock.notify_all()
            return len(back)

    # -- dead jobs --------------------------------------------------------------------------

    def revive(self, message: Message) -> bool:
        """A dead message back at the end of its queue with its attempts reset, same msg_id."""
        with self.lock:
            if message not in self.dead:
                return False
            self.dead.remove(message)
            message.failures, message.error, message.died_at = 0, None, None
            self._make_ready(message, self.clock())
            self.lock.notify_all()
            return True

    def delete_dead(self, message: Message) -> bool:
        with self.lock:
            if message not in self.dead:
                return False
            self.dead.remove(message)
            return True

    # -- operator steps on hidden jobs (each returns whether the job was still there) -----

    def run_now(self, message: Message) -> bool:
        """A delayed or retrying message visible now, at the end of its queue; it keeps its
        failures, so it runs as its next attempt."""
        with self.lock:
            if message not in self.later:
                return False
            self.later.remove(message)
            self._make_ready(message, self.clock())
            self.lock.notify_all()
            return True

    def kill(self, message: Message, error: dict) -> bool:
        """A delayed or retrying message dead now; ``error`` is kept when it never failed."""
        with self.lock:
            if message not in self.later:
                return False
            self.later.remove(message)
            message.due, message.died_at = None, self.clock()
            if message.error is None:
                message.error = dict(error, attempts=message.failures, failed_at=self.clock())
            self.dead.append(message)
            return True

    def delete_later(self, message: Message) -> bool:
        with self.lock:
            if message not in self.later:
                return False
            self.later.remove(message)
            return True

    def purge(self, queue: str) -> int:
        """Drop the messages waiting in ``queue``; returns how many there were."""
        with self.lock:
            waiting = self.queues.pop(queue, [])
            return len(waiting)

    # -- periodic schedules -----------------------------------------------------------------

    def refresh_schedules(self, described: dict[str, dict], now: float) -> dict[str, float]:
        """Record schedules (key -> ``Schedule.describe()``); returns key -> first seen."""
        with self.lock:
            for key, info in described.items():
                self.schedules.setdefault(key, dict(info, first_seen=now))
            return {key: self.schedules[key]["first_seen"] for key in described}

    def claim_tick(self, key: str, tick: float) -> bool:
        """True for the first claim of ``tick`` of schedule ``key``, False ever after."""
        with self.lock:
            claimed = self.ticks.setdefault(key, set())
            if tick in claimed:
                return False
            claimed.add(tick)
            return True

    # -- history of settled runs ------------------------------------------------------------

    def record_settled(self, identity: str, settled: Mapping[int, tuple[int, int]]) -> None:
        """Keep ``settled`` (``{minute: (processed, failed)}``, totals so far) as supervisor
        ``identity``'s counts for those minutes; a count never goes down, so an older
        snapshot written late changes nothing. Minutes past ``HISTORY_SECONDS`` are dropped."""
        with self.lock:
            for minute, (processed, failed) in settled.items():
                counts = self.history.setdefault(int(minute), {})
                before = counts.get(identity, (0, 0))
                counts[identity] = (max(before[0], processed), max(before[1], failed))
            oldest = self.clock() - HISTORY_SECONDS
            for minute in [m for m in self.history if m < oldest]:
                del self.history[minute]

    def settled_in(self, minutes: Iterable[int]) -> dict[int, tuple[int, int]]:
        """``{minute: (processed, failed)}`` summed over supervisors, for those of ``minutes``
        that have any."""
        with self.lock:
            found: dict[int, tuple[int, int]] = {}
            for minute in minutes:
                counts = self.history.get(minute)
                if counts:
                    found[minute] = (sum(p for p, _ in counts.values()),
                                     sum(f for _, f in counts.values()))
            return found

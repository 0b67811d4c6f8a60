"""What a pgmq consumer knows of its queues between reads: which have work, and when not.

A read costs a round trip, so a consumer of many queues reads only those likely to have a
visible message: one a NOTIFY named, one the last read found jobs in, one whose hidden message
has turned visible since. Every other queue is looked at, all at once, by a survey (one
statement: each queue's earliest ``vt``), and no more often than every ``recheck`` seconds,
the poll interval (``fetch_timeout``) for producers that do not notify.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence


class QueueKnowledge:
    """Per queue: has work, or was found empty at some time with its next visible message due
    at some time (``math.inf``: none hidden; unknown after a read that found nothing)."""

    def __init__(self, recheck: float):
        self.recheck = recheck
        self._has_work: set[str] = set()
        self._seen_visible: set[str] = set()       # a survey saw a visible message, unread
        self._empty_at: dict[str, float] = {}      # when a read or a survey found nothing
        self._visible_at: dict[str, float] = {}     # known from a survey

    # -- what was learnt --------------------------------------------------------------------

    def notified(self, queue: str) -> None:
        """A NOTIFY named ``queue``: a job was committed to it."""
        self._has_work.add(queue)

    def read(self, queue: str, found: bool, now: float) -> None:
        """A read of ``queue`` found jobs, or nothing: its next visible time is then unknown,
        unless a survey had just seen a visible message there (another transaction holds
        those rows: look again at the next poll, not in a loop)."""
        held = queue in self._seen_visible
        self._seen_visible.discard(queue)
        if found:
            self._has_work.add(queue)
            return
        self._has_work.discard(queue)
        self._empty_at[queue] = now
        if held:
            self._visible_at[queue] = now + self.recheck
        else:
            self._visible_at.pop(queue, None)

    def surveyed(self, queue: str, wait: float | None, now: float) -> None:
        """A survey saw ``queue``'s earliest message due in ``wait`` seconds (None: empty)."""
        if wait is not None and wait <= 0:
            self._has_work.add(queue)
            self._seen_visible.add(queue)
            return
        self._has_work.discard(queue)
        self._empty_at[queue] = now
        self._visible_at[queue] = math.inf if wait is None else now + wait

    # -- what to do next --------------------------------------------------------------------

    def likely_has_work(self, queue: str, now: float) -> bool:
        """Worth a read: named by a NOTIFY, had jobs at the last read, or a hidden message of
        it has turned visible since."""
        return queue in self._has_work or self._visible_at.get(queue, math.inf) <= now

    def to_survey(self, queues: Iterable[str], now: float) -> list[str]:
        """Queues to survey before reading: never looked at, or not for ``recheck`` seconds."""
        return [queue for queue in queues
                if queue not in self._has_work and now - self._empty_at.get(queue, -math.inf)
                >= self.recheck]

    def unknown_wait(self, queues: Iterable[str]) -> list[str]:
        """Queues whose next visible time a wait needs and no survey has given since a read."""
        return [queue for queue in queues
                if queue not in self._has_work and queue not in self._visible_at]

    def seconds_to_next_visible(self, queues: Sequence[str], now: float) -> float:
        """Seconds until the earliest known hidden message of ``queues`` turns visible."""
        due = min((self._visible_at.get(queue, math.inf) for queue in queues), default=math.inf)
        return max(0.0, due - now)

"""Which of a consumer's queues an operator paused, read from the server every few seconds."""

from __future__ import annotations

import select
import time
from typing import Callable, Iterable, Sequence

from jobrunner.backends.base import Wakeable

#: Seconds a consumer goes on using what it last read of the paused queues: a pause (or a
#: resume) reaches every child on every host within this time, without a read per fetch.
PAUSE_CHECK_SECONDS = 2.0


class PausedQueues:
    """A consumer's queues minus the paused ones; ``read`` returns the paused queue names
    of the whole backend (one round trip), called at most every ``PAUSE_CHECK_SECONDS``."""

    def __init__(self, queues: Sequence[str], read: Callable[[], Iterable[str]],
                 clock: Callable[[], float] = time.monotonic):
        self.queues = list(queues)
        self._read = read
        self._clock = clock
        self._serving = self.queues
        self._checked_at: float | None = None

    def serving(self) -> list[str]:
        """The queues to fetch from now, in the consumer's order."""
        now = self._clock()
        if self._checked_at is None or now - self._checked_at >= PAUSE_CHECK_SECONDS:
            self.learn(self._read())
        return self._serving

    def learn(self, paused: Iterable[str]) -> None:
        """The paused queues, read by the consumer with other things in one round trip:
        ``serving`` needs no read of its own for ``PAUSE_CHECK_SECONDS``."""
        paused = set(paused)
        self._serving = [queue for queue in self.queues if queue not in paused]
        self._checked_at = self._clock()

    def next_check_in(self) -> float:
        """Seconds until ``serving`` reads the paused queues again: a blocking fetch waits
        no longer, so a pause is seen within ``PAUSE_CHECK_SECONDS``."""
        if self._checked_at is None:
            return 0.0
        return max(0.0, PAUSE_CHECK_SECONDS - (self._clock() - self._checked_at))

    def expire(self) -> None:
        """Read the paused queues again at the next ``serving``."""
        self._checked_at = None


def wait_while_paused(timeout: float, wake: Wakeable | None) -> None:
    """A fetch's wait when every queue of the consumer is paused: ``timeout`` seconds, or
    until ``wake`` (the child's pipe) is readable."""
    timeout = max(0.0, min(float(timeout), PAUSE_CHECK_SECONDS))
    if wake is None:
        time.sleep(timeout)
    else:
        select.select([wake], [], [], timeout)

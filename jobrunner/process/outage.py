"""Says once that a backend is away, again only when the reason changes, and when it is back."""

import logging
import time


class OutageNotice:
    """The log lines of one process's outage: a server down for an hour must not fill the log
    with a line per retry, yet a new reason (refused, then full) is worth saying."""

    def __init__(self, log: logging.Logger, label: str) -> None:
        self.log = log
        self.label = label
        self.reason = None           # why the backend is away, while it is
        self.since = None            # monotonic time the outage began

    def failed(self, what: str, reason: str) -> None:
        """One more failed try; ``what`` says what failed and how it is retried."""
        if reason != self.reason:
            self.log.warning("%s: %s (%s)", self.label, what, reason)
            self.reason = reason
        if self.since is None:
            self.since = time.monotonic()

    def ended(self, backend: str) -> None:
        """The backend answered: say so if it had been away."""
        if self.since is not None:
            self.log.info("%s: %s answers again after %.1fs", self.label, backend,
                          time.monotonic() - self.since)
        self.reason = self.since = None

"""What differs between the Sidekiq versions a Redis is shared with, decided in one place.

The ``sidekiq_version`` setting names the Ruby Sidekiq the user runs beside jobrunner
(``"6.4"``, ``"7.3"``, ``"8.1"``...; default ``DEFAULT_VERSION``, the newest we checked). Only
two rules depend on it; everything else jobrunner writes is read by 6.4, 7.x and 8.x alike
(both running-job hashes, the heartbeat's own ``concurrency``, ``info``'s ``capsules``...):

    retry_for   before 8.1 a ``retry_for`` window limits retries *as well as* the count
                (7.1.3 to 8.0: ``job_retry.rb`` checks the count first, then the window);
                from 8.1 on it *replaces* the count ("retry_for and retry are now mutually
                exclusive", 8.1.0). 6.4 has no ``retry_for``: the 7.x rule applies to a job
                that carries one anyway.
    metrics     the Metrics tab's keys: none for 6.x (it has no such tab), 7.x's
                ``j|%Y%m%d|%-H:%-M`` with ``<class>-%d-%H:%-M`` histograms, or 8.x's one-minute
                ``j|%y%m%d|%-H:%M`` and ten-minute buckets with ``h|<class>-%-d-%-H:%-M``
                histograms (``sidekiq/metrics.py``).
"""

from __future__ import annotations

import re

import attr

from jobrunner.errors import ConfigError

#: The newest Sidekiq whose wire format was checked (``docs/sidekiq-versions.md``).
DEFAULT_VERSION = "8.1"
_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.\d+)*$")


@attr.s(frozen=True, slots=True)
class SidekiqVersion:
    """The Ruby Sidekiq version jobrunner shares Redis with, as ``(major, minor)``."""

    major: int = attr.ib()
    minor: int = attr.ib()

    @classmethod
    def parse(cls, text: str | None) -> SidekiqVersion:
        """``"8.1"`` or ``"7.3.10"`` -> ``SidekiqVersion(8, 1)``; ConfigError for anything
        that is not a version of Sidekiq 6, 7 or 8."""
        match = _VERSION.match(str(text or DEFAULT_VERSION).strip())
        if not match or int(match.group(1)) not in (6, 7, 8):
            raise ConfigError(f"sidekiq_version must be a Sidekiq version such as 6.4, 7.3 or "
                              f"8.1, got {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    @property
    def retry_for_replaces_count(self) -> bool:
        """True from 8.1 on: a job with ``retry_for`` is retried for that long, whatever its
        count; before, both the count and the window must allow a retry."""
        return (self.major, self.minor) >= (8, 1)

    @property
    def metrics_format(self) -> int | None:
        """The major version whose Metrics keys to write, or None (6.x has no Metrics tab)."""
        return self.major if self.major >= 7 else None

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

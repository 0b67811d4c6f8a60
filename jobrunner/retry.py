"""Backoff policies: pure functions from a failure count to a delay in seconds."""

from __future__ import annotations

import random
from typing import Protocol


class RandomSource(Protocol):
    """What the policies draw their jitter from: the ``random`` module or a ``random.Random``."""

    def randint(self, a: int, b: int) -> int: ...

    def random(self) -> float: ...


def sidekiq_delay(retry_count: int, rng: RandomSource = random) -> int:
    """Sidekiq's retry delay: ``count**4 + 15 + rand(0..9) * (count + 1)`` seconds.

    ``retry_count`` is the value stored in the job after this failure (0 after the first one).
    """
    return retry_count ** 4 + 15 + rng.randint(0, 9) * (retry_count + 1)


def exponential_delay(retry_count: int, base: float = 1.0, cap: float = 24 * 3600.0,
                      rng: RandomSource = random) -> float:
    """Exponential backoff with jitter: ``(base + U[0, 9 * base)) * 2**retry_count``, capped.

    The same shape as Roadster's default pgmq policy; ``retry_count`` is 0 after the first failure.
    """
    delay = (base + rng.random() * 9 * base) * (2 ** min(retry_count, 32))
    return min(delay, cap)


def should_retry(failures: int, max_retries: int) -> bool:
    """True while another run is allowed: ``max_retries`` retries follow the first failure."""
    return failures <= max_retries

"""The order in which a consumer tries its queues on one fetch: strict or weighted."""

from __future__ import annotations

import random
from typing import Iterable, Sequence, Tuple, Union

QueueEntry = Union[str, Tuple[str, int]]


def normalize_queues(queues: Iterable[QueueEntry]) -> list[tuple[str, int]]:
    """``["a", ("b", 3)]`` -> ``[("a", 0), ("b", 3)]``; weight 0 means "not given"."""
    result = []
    for entry in queues:
        if isinstance(entry, (tuple, list)):
            name, weight = entry
            result.append((str(name), max(0, int(weight))))
        else:
            result.append((str(entry), 0))
    return result


def is_weighted(queues: Sequence[tuple[str, int]], order: str) -> bool:
    """Weighted when asked for, or as soon as any queue has a weight (Sidekiq's rule)."""
    return order == "weighted" or any(weight > 0 for _, weight in queues)


def queue_order(queues: Sequence[tuple[str, int]], weighted: bool,
                rng: random.Random | None = None) -> list[str]:
    """Queue names in the order to try them for one fetch.

    Strict: the given order, duplicates removed. Weighted: each queue repeated by its weight
    (at least once), shuffled, then de-duplicated, so a queue comes first with probability
    proportional to its weight.
    """
    if not weighted:
        return list(dict.fromkeys(name for name, _ in queues))
    pool = [name for name, weight in queues for _ in range(max(1, weight))]
    (rng or random).shuffle(pool)
    return list(dict.fromkeys(pool))

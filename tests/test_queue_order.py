"""The order a consumer tries its queues in: strict, or weighted at random."""

import random

from jobrunner.backends import queue_order as qo


def test_strict_order_is_fixed_and_deduplicated():
    queues = qo.normalize_queues(["a", "b", "a", "c"])
    assert qo.queue_order(queues, False) == ["a", "b", "c"]


def test_weighted_order_follows_weights():
    queues = qo.normalize_queues([("a", 3), ("b", 1)])
    assert qo.is_weighted(queues, "strict")
    rng = random.Random(7)
    firsts = [qo.queue_order(queues, True, rng)[0] for _ in range(4000)]
    assert sorted(set(qo.queue_order(queues, True, rng))) == ["a", "b"]
    assert 0.7 < firsts.count("a") / len(firsts) < 0.8


def test_plain_names_are_weighted_only_when_asked():
    queues = qo.normalize_queues(["a", "b"])
    assert not qo.is_weighted(queues, "strict") and qo.is_weighted(queues, "weighted")
    orders = {tuple(qo.queue_order(queues, True, random.Random(i))) for i in range(20)}
    assert orders == {("a", "b"), ("b", "a")}

"""Workers for the supervisor benchmarks; the queue comes from BENCH_QUEUE.

Drain: no-op workers; a drain is over when the queue and every in-flight list are empty, that
is when every job has been acked (``runner.sidekiq_remaining``, ``runner.pgmq_remaining``).
Latency: workers that push the time they started to a Redis list.
Head-of-line: workers that sleep ``args`` seconds and count themselves when short.
"""

import os
import time

import redis

import jobrunner

QUEUE = os.environ.get("BENCH_QUEUE", "bench")
STARTED = "bench:started"        # LIST of "<index> <epoch seconds>" pushed by latency workers
SHORT_DONE = "bench:short_done"  # LIST of epoch seconds pushed by short head-of-line jobs


def _redis():
    return redis.Redis.from_url(os.environ["JOBRUNNER_REDIS_URL"])


class PgNoop(jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer
    queue = QUEUE

    def handle(self, args):
        pass


class RedisNoop(jobrunner.Worker):
    enqueuer = jobrunner.SidekiqEnqueuer
    queue = QUEUE

    def handle(self, args):
        pass


class _Started:
    def __init__(self):
        self.redis = _redis()

    def handle(self, args):
        self.redis.rpush(STARTED, f"{args} {time.time():.6f}")


class PgLatency(_Started, jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer
    queue = QUEUE


class RedisLatency(_Started, jobrunner.Worker):
    enqueuer = jobrunner.SidekiqEnqueuer
    queue = QUEUE


class _Sleeper:
    def __init__(self):
        self.redis = _redis()

    def handle(self, args):
        time.sleep(args)
        if args < 1:
            self.redis.rpush(SHORT_DONE, f"{time.time():.6f}")


class PgSleep(_Sleeper, jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer
    queue = QUEUE


class RedisSleep(_Sleeper, jobrunner.Worker):
    enqueuer = jobrunner.SidekiqEnqueuer
    queue = QUEUE


def _registry(*workers):
    registry = jobrunner.Registry()
    for worker in workers:
        registry.register(worker)
    return registry


pg_registry = _registry(PgNoop)
redis_registry = _registry(RedisNoop)
pg_latency_registry = _registry(PgLatency)
redis_latency_registry = _registry(RedisLatency)
pg_sleep_registry = _registry(PgSleep)
redis_sleep_registry = _registry(RedisSleep)

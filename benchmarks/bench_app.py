"""No-op workers for the drain benchmarks; the queue comes from BENCH_QUEUE."""

import os

import redis

import jobrunner

QUEUE = os.environ.get("BENCH_QUEUE", "bench")
COUNTER = "bench:done"


class PgNoop(jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer
    queue = QUEUE

    def handle(self, args):
        pass


class RedisNoop(jobrunner.Worker):
    """Counts itself with one INCR, like the raw BRPOP + INCR loop it is compared with."""

    enqueuer = jobrunner.SidekiqEnqueuer
    queue = QUEUE

    def __init__(self):
        self.redis = redis.Redis.from_url(os.environ["JOBRUNNER_REDIS_URL"])

    def handle(self, args):
        self.redis.incr(COUNTER)


pg_registry = jobrunner.Registry()
pg_registry.register(PgNoop)
redis_registry = jobrunner.Registry()
redis_registry.register(RedisNoop)

"""Workers for the supervisor benchmarks; the queue comes from BENCH_QUEUE.

Drain: no-op workers, workers that do one INCR of ``COUNTER`` on the benchmark's Redis, and
workers that sleep 5 ms; a drain is over when the queue and every in-flight list are empty, that
is when every job has been acked (``runner.sidekiq_remaining``, ``runner.pgmq_drained``).
``RedisIncr`` has the name of the Ruby class in ``bench_jobs.rb``, so Ruby Sidekiq runs its jobs.
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
COUNTER = "bench:count"          # STRING that one-INCR drain jobs increment, once per job
PAUSE = 0.005                    # seconds a 5 ms drain job sleeps


def _redis():
    return redis.Redis.from_url(os.environ["JOBRUNNER_REDIS_URL"])


class _Noop:
    def handle(self, args):
        pass


class _Incr:
    """One INCR per job, on a client made once per child."""

    def __init__(self):
        self.redis = _redis()

    def handle(self, args):
        self.redis.incr(COUNTER)


class _Pause:
    def handle(self, args):
        time.sleep(PAUSE)


class _Started:
    def __init__(self):
        self.redis = _redis()

    def handle(self, args):
        self.redis.rpush(STARTED, f"{args} {time.time():.6f}")


class _Sleeper:
    def __init__(self):
        self.redis = _redis()

    def handle(self, args):
        time.sleep(args)
        if args < 1:
            self.redis.rpush(SHORT_DONE, f"{time.time():.6f}")


def _workers(job, name):
    """``job``'s pgmq worker ``Pg<name>`` and its Redis worker ``Redis<name>``, on ``QUEUE``."""
    return tuple(type(f"{prefix}{name}", (job, jobrunner.Worker),
                      {"enqueuer": enqueuer, "queue": QUEUE, "__module__": __name__})
                 for prefix, enqueuer in (("Pg", jobrunner.PgEnqueuer),
                                          ("Redis", jobrunner.SidekiqEnqueuer)))


PgNoop, RedisNoop = _workers(_Noop, "Noop")
PgIncr, RedisIncr = _workers(_Incr, "Incr")
PgPause, RedisPause = _workers(_Pause, "Pause")
PgLatency, RedisLatency = _workers(_Started, "Latency")
PgSleep, RedisSleep = _workers(_Sleeper, "Sleep")


def _registry(*workers):
    registry = jobrunner.Registry()
    for worker in workers:
        registry.register(worker)
    return registry


pg_registry = _registry(PgNoop)
redis_registry = _registry(RedisNoop)
pg_incr_registry = _registry(PgIncr)
redis_incr_registry = _registry(RedisIncr)
pg_pause_registry = _registry(PgPause)
redis_pause_registry = _registry(RedisPause)
pg_latency_registry = _registry(PgLatency)
redis_latency_registry = _registry(RedisLatency)
pg_sleep_registry = _registry(PgSleep)
redis_sleep_registry = _registry(RedisSleep)

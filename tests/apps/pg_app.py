"""Workers for process-level pgmq tests; the queue and the output file come from the env.

The job bodies live in ``supervised.py`` and are shared with ``redis_app.py``.
"""

import jobrunner

from .supervised import (QUEUE, AlwaysFailsJob, DiesOnceJob, IgnoresAlarmJob, RecordAttempts,
                         RecordJob, SlowJob, TooSlowJob, record)

__all__ = ["QUEUE", "record", "registry"]


class Record(RecordJob, jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer
    queue = QUEUE


class AlwaysFails(AlwaysFailsJob, jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer
    queue = QUEUE


class Slow(SlowJob, jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer
    queue = QUEUE


class TooSlow(TooSlowJob, jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer
    queue = QUEUE


class IgnoresAlarm(IgnoresAlarmJob, jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer
    queue = QUEUE


class DiesOnce(DiesOnceJob, jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer
    queue = QUEUE


registry = jobrunner.Registry()
for worker in (Record, AlwaysFails, Slow, TooSlow, IgnoresAlarm, DiesOnce):
    registry.register(worker)
registry.add_middleware(RecordAttempts())

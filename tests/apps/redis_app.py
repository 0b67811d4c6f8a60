"""Workers for process-level Sidekiq tests, mirroring ``pg_app.py`` with SidekiqEnqueuer.

Environment: TEST_QUEUE, TEST_OUT as in ``supervised.py``; TEST_HOUSEKEEPING_SECONDS (default
0.5) sets the housekeeper's heartbeat interval and average poll interval, which are 5 s in
production, so that tests of delayed jobs, retries and remote signals take a second, not ten.
Only the cadence changes: the code paths are the real ones.
"""

import os

import jobrunner
from jobrunner.backends.sidekiq.housekeeper import SidekiqHousekeeper

from .supervised import (QUEUE, AlwaysFailsJob, DiesOnceJob, IgnoresAlarmJob, RecordAttempts,
                         RecordJob, SlowJob, TooSlowJob, record)

__all__ = ["QUEUE", "record", "registry"]

_CADENCE = float(os.environ.get("TEST_HOUSEKEEPING_SECONDS", "0.5"))
SidekiqHousekeeper.beat_interval = _CADENCE
SidekiqHousekeeper.poll_average = _CADENCE


class Record(RecordJob, jobrunner.Worker):
    enqueuer = jobrunner.SidekiqEnqueuer
    queue = QUEUE


class AlwaysFails(AlwaysFailsJob, jobrunner.Worker):
    enqueuer = jobrunner.SidekiqEnqueuer
    queue = QUEUE


class Slow(SlowJob, jobrunner.Worker):
    enqueuer = jobrunner.SidekiqEnqueuer
    queue = QUEUE


class TooSlow(TooSlowJob, jobrunner.Worker):
    enqueuer = jobrunner.SidekiqEnqueuer
    queue = QUEUE


class IgnoresAlarm(IgnoresAlarmJob, jobrunner.Worker):
    enqueuer = jobrunner.SidekiqEnqueuer
    queue = QUEUE


class DiesOnce(DiesOnceJob, jobrunner.Worker):
    enqueuer = jobrunner.SidekiqEnqueuer
    queue = QUEUE


registry = jobrunner.Registry()
for worker in (Record, AlwaysFails, Slow, TooSlow, IgnoresAlarm, DiesOnce):
    registry.register(worker)
registry.add_middleware(RecordAttempts())

"""The operator app (``ops_app.py``) with one periodic schedule per backend, for the dashboard's
browser tests: one supervisor serves both backends.

The schedules tick once a year (1 January, 00:00 UTC), so they never fire during a test; the
Periodic page's "enqueue now" sends their job. Environment as in ``ops_app.py``.
"""

import jobrunner

from .ops_app import workers

#: Never due during a test run.
YEARLY = "0 0 1 1 *"
#: The args of each backend's schedule (a Record job records its ``n``).
SCHEDULED_ARGS = {"pgmq": {"n": 900, "from": "schedule"}, "sidekiq": {"n": 901, "from": "schedule"}}

made = {w.name: w for w in workers(jobrunner.PgEnqueuer, "Pg")
        + workers(jobrunner.SidekiqEnqueuer, "Redis")}
registry = jobrunner.Registry()
for worker in made.values():
    registry.register(worker)
registry.register_periodic(made["PgRecord"], cron=YEARLY, args=SCHEDULED_ARGS["pgmq"])
registry.register_periodic(made["RedisRecord"], cron=YEARLY, args=SCHEDULED_ARGS["sidekiq"])

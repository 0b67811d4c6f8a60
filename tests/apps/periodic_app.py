"""Workers on 1-second schedules on both backends, for process-level periodic tests.

Environment: TEST_QUEUE (the queue on both backends), TEST_OUT (each run appends a line),
TEST_RUN (a tag in the args, so every test has its own schedule keys) and TEST_VARIANT
("full": schedules "a" and "b" per backend; "without-b": "b" removed, as after a deploy).
"""

import os
import time

import jobrunner

QUEUE = os.environ.get("TEST_QUEUE", "default")
OUT = os.environ.get("TEST_OUT", "/dev/null")
RUN = os.environ.get("TEST_RUN", "run")
VARIANT = os.environ.get("TEST_VARIANT", "full")
EVERY_SECOND = "* * * * * *"


def record(*fields):
    # One short write with O_APPEND: lines from several processes never interleave.
    with open(OUT, "a") as out:
        out.write(" ".join(str(f) for f in fields) + "\n")


class PgTick(jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer
    queue = QUEUE
    # The archive keeps every run's message, and with it the tick it was enqueued for.
    success_action = "archive"

    def handle(self, args):
        record("pgmq", args["name"], time.time())


class RedisTick(jobrunner.Worker):
    enqueuer = jobrunner.SidekiqEnqueuer
    queue = QUEUE
    max_retries = 0

    def handle(self, args):
        record("sidekiq", args["name"], time.time())
        # Redis has no archive: failing puts the job, with its tick, in the dead set.
        raise ValueError("periodic test job: kept in the dead set on purpose")


registry = jobrunner.Registry()
for name in ("a", "b") if VARIANT == "full" else ("a",):
    for worker in (PgTick, RedisTick):
        registry.register_periodic(worker, cron=EVERY_SECOND, args={"run": RUN, "name": name})

"""Workers on three queues for the dedicated-pool tests (``test_pools.py``).

Environment: TEST_BACKEND ("pgmq" or "sidekiq"), TEST_QUEUE (queues are ``<it>_crit``,
``<it>_b``, ``<it>_c``), FAULT_OUT (each run appends ``ran <queue> <n> <pid>``).
"""

import os
import time

import jobrunner

BACKEND = os.environ.get("TEST_BACKEND", "sidekiq")
QUEUE = os.environ.get("TEST_QUEUE", "default")
OUT = os.environ.get("FAULT_OUT") or os.environ.get("TEST_OUT", "/dev/null")
ENQUEUER = jobrunner.SidekiqEnqueuer if BACKEND == "sidekiq" else jobrunner.PgEnqueuer


class Job:
    enqueuer = ENQUEUER
    timeout = 10

    def handle(self, args):
        time.sleep(args.get("seconds", 0))
        with open(OUT, "a") as out:
            out.write(f"ran {self.queue} {args['n']} {os.getpid()}\n")


registry = jobrunner.Registry()
for suffix in ("crit", "b", "c"):
    registry.register(type(f"Job_{suffix}", (Job, jobrunner.Worker),
                           {"queue": f"{QUEUE}_{suffix}"}))

"""Workers for the cut-off host test (``test_cut_off_host.py``): jobs that take a while, a tick.

Environment:
    TEST_BACKEND   "pgmq" or "sidekiq": which enqueuer the workers use
    TEST_QUEUE     the queue of both workers
    TEST_OUT       each run appends ``start <n> <host> <time>`` and ``end <n> <host> <time>``
    TEST_HOST      the name this supervisor's host goes by in those lines
    TEST_RUN       a tag in the tick's args, so every test has its own schedule
    NETNS_FAST     "1": a lost host's jobs come back within seconds (pgmq leases of timeout +
                   grace + 1 s, a Sidekiq heartbeat that expires after 3 s, scanned every 1 s);
                   only the timings change, not the code paths. Unset: the defaults.
"""

import os
import time

import jobrunner
from jobrunner.backends.pgmq import backend as pgmq_module
from jobrunner.backends.sidekiq.housekeeper import SidekiqHousekeeper

BACKEND = os.environ.get("TEST_BACKEND", "pgmq")
QUEUE = os.environ.get("TEST_QUEUE", "default")
OUT = os.environ.get("TEST_OUT", "/dev/null")
HOST = os.environ.get("TEST_HOST", "?")
RUN = os.environ.get("TEST_RUN", "run")
ENQUEUER = jobrunner.SidekiqEnqueuer if BACKEND == "sidekiq" else jobrunner.PgEnqueuer

if os.environ.get("NETNS_FAST") == "1":
    pgmq_module.LEASE_MARGIN = 1
    SidekiqHousekeeper.beat_interval = 0.5
    SidekiqHousekeeper.heartbeat_ttl = 3
    SidekiqHousekeeper.orphan_interval = 1.0


def record(*fields):
    # One short write with O_APPEND: lines from several processes never interleave.
    with open(OUT, "a") as out:
        out.write(" ".join(str(f) for f in fields) + "\n")


class Work(jobrunner.Worker):
    """Runs for ``seconds``, recording when it started and ended, and on which host."""

    enqueuer = ENQUEUER
    queue = QUEUE
    timeout = 3
    max_retries = 25

    def handle(self, args):
        record("start", args["n"], HOST, time.time())
        time.sleep(args["seconds"])
        record("end", args["n"], HOST, time.time())


class Tick(jobrunner.Worker):
    """Every second; its runs stay where the test can read their ticks back (pgmq's archive,
    Sidekiq's dead set), as in ``periodic_app.py``."""

    enqueuer = ENQUEUER
    queue = QUEUE
    timeout = 3          # a pgmq lease is per queue, set by its longest timeout: Work's
    success_action = "archive"
    max_retries = 0

    def handle(self, args):
        if BACKEND == "sidekiq":
            raise ValueError("tick: kept in the dead set on purpose")


registry = jobrunner.Registry()
registry.register(Work)
registry.register_periodic(Tick, cron="* * * * * *", args={"run": RUN})

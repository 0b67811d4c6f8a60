"""Workers on both backends for the operator-command tests: one supervisor serves both.

Environment: TEST_QUEUE (each backend's first queue; ``<TEST_QUEUE>_other`` is the second,
served after it), TEST_OUT as in ``supervised.py``; the Sidekiq housekeeper beats every
0.5 s, as in ``redis_app.py``.
"""

import os
import time

import jobrunner
from jobrunner.backends.sidekiq.housekeeper import SidekiqHousekeeper

from .supervised import QUEUE, record

SidekiqHousekeeper.beat_interval = SidekiqHousekeeper.poll_average = 0.5
OTHER = QUEUE + "_other"
#: While this file exists, a Hold job keeps running.
HOLD = os.environ.get("TEST_OUT", "/dev/null") + ".hold"


def charge_card(card):
    raise ValueError(f"card {card} declined")


class ChargeJob:
    """Fails every time; retried in an hour, so it waits in the retries."""

    @classmethod
    def backoff(cls, retry_count):
        return 3600

    def handle(self, args):
        record("charge", args["n"], time.time())
        charge_card(args["card"])


class RecordJob:
    def handle(self, args):
        record("ran", args["n"], time.time(), os.getpid())


class HoldJob:
    timeout = None

    def handle(self, args):
        record("start", args["n"], os.getpid())
        while os.path.exists(HOLD):
            time.sleep(0.05)
        record("end", args["n"])


def workers(enqueuer, prefix):
    """The three workers on one backend, on QUEUE, and Record also on OTHER."""
    made = [type(f"{prefix}{base.__name__[:-3]}", (base, jobrunner.Worker),
                 {"enqueuer": enqueuer, "queue": QUEUE})
            for base in (ChargeJob, RecordJob, HoldJob)]
    made.append(type(f"{prefix}RecordOther", (RecordJob, jobrunner.Worker),
                     {"enqueuer": enqueuer, "queue": OTHER}))
    return made


registry = jobrunner.Registry()
for worker in workers(jobrunner.PgEnqueuer, "Pg") + workers(jobrunner.SidekiqEnqueuer, "Redis"):
    registry.register(worker)

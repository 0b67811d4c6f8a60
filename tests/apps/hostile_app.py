"""Workers for the hostile-payload tests (``test_hostile_input.py``), on Redis.

Environment:
    TEST_QUEUE      the queue ``Record`` jobs use
    TEST_OUT        each run of ``Record`` appends ``ran <n>``
    HOSTILE_STALL   seconds: a child's time limit for a bad payload (``BAD_PAYLOAD_TIMEOUT``),
                    and burying one hangs instead, as a child pinned by its payload would
"""

import os
import time

import jobrunner
from jobrunner.backends.sidekiq.backend import SidekiqConsumer
from jobrunner.process import child

QUEUE = os.environ.get("TEST_QUEUE", "default")
OUT = os.environ.get("TEST_OUT", "/dev/null")


class Record(jobrunner.Worker):
    enqueuer = jobrunner.SidekiqEnqueuer
    queue = QUEUE
    timeout = 10

    def handle(self, args):
        with open(OUT, "a") as out:       # one short O_APPEND write: lines never interleave
            out.write(f"ran {args['n']}\n")


def _hanging_on_bad_payloads(bury):
    def patched(self, job, error):
        if job.problem is not None:
            time.sleep(3600)              # the hang itself; only the supervisor's kill ends it
        return bury(self, job, error)
    return patched


if os.environ.get("HOSTILE_STALL"):
    child.BAD_PAYLOAD_TIMEOUT = float(os.environ["HOSTILE_STALL"])
    SidekiqConsumer.bury = _hanging_on_bad_payloads(SidekiqConsumer.bury)

registry = jobrunner.Registry()
registry.register(Record)

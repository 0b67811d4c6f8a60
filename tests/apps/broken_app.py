"""An app whose children cannot start: TEST_BACKEND's consumer fails with a programming error.

The supervisor imports this module and forks; every child then fails while opening its
consumer, as it would with a bug in a backend or a broken driver install. The supervisor must
give up with exit code 5 and one clear error, not fork forever.
"""

import os

import jobrunner
from jobrunner.backends.pgmq.backend import PgmqBackend
from jobrunner.backends.sidekiq.backend import SidekiqBackend

BACKEND = os.environ.get("TEST_BACKEND", "pgmq")
QUEUE = os.environ.get("TEST_QUEUE", "default")


def _broken_consumer(self, queues, child_id, acks=None):
    raise AttributeError("'NoneType' object has no attribute 'cursor' (broken on purpose)")


if BACKEND == "pgmq":
    PgmqBackend.consumer = _broken_consumer
    enqueuer = jobrunner.PgEnqueuer
else:
    SidekiqBackend.consumer = _broken_consumer
    enqueuer = jobrunner.SidekiqEnqueuer


class Never(jobrunner.Worker):
    queue = QUEUE

    def handle(self, args):
        raise AssertionError("no child of this app ever runs a job")


Never.enqueuer = enqueuer
registry = jobrunner.Registry()
registry.register(Never)

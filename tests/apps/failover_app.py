"""A worker for the Postgres failover test (``test_pg_failover.py``).

Environment: TEST_QUEUE names its queue; each run appends ``ran <n> <pid> <epoch time>`` to
TEST_OUT. Leases are short (LEASE_MARGIN 1 s, timeout 2 s), as in fault_app's FAULT_FAST, so a
job whose acknowledgement died with the old primary comes back within seconds, not minutes.
"""

import os
import time

import jobrunner
from jobrunner.backends.pgmq import backend as pgmq_module

QUEUE = os.environ.get("TEST_QUEUE", "default")
OUT = os.environ.get("TEST_OUT", "/dev/null")

pgmq_module.LEASE_MARGIN = 1


class Stamp(jobrunner.Worker):
    """Records that job ``n`` ran, where and when."""

    enqueuer = jobrunner.PgEnqueuer
    queue = QUEUE
    timeout = 2
    max_retries = 25

    def handle(self, args):
        with open(OUT, "a") as out:           # one short O_APPEND write: lines never interleave
            out.write(f"ran {args['n']} {os.getpid()} {time.time():.3f}\n")


registry = jobrunner.Registry()
registry.register(Stamp)

"""Workers for process-level pgmq tests; the queue and the output file come from the env."""

import os
import time

import jobrunner

QUEUE = os.environ.get("TEST_QUEUE", "default")
OUT = os.environ.get("TEST_OUT", "/dev/null")


def record(*fields):
    # One short write with O_APPEND: lines from several children never interleave.
    with open(OUT, "a") as out:
        out.write(" ".join(str(f) for f in fields) + "\n")


class Record(jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer
    queue = QUEUE

    def handle(self, args):
        record("ran", args["n"], time.time(), os.getpid())


class AlwaysFails(jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer
    queue = QUEUE
    max_retries = 1

    @classmethod
    def backoff(cls, retry_count):
        return 0

    def handle(self, args):
        record("fail", args["n"], time.time())
        raise ValueError(f"boom {args['n']}")


class Slow(jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer
    queue = QUEUE
    timeout = 30

    def handle(self, args):
        record("start", args["n"], os.getpid())
        time.sleep(args["seconds"])
        record("end", args["n"])


class TooSlow(jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer
    queue = QUEUE
    timeout = 1
    max_retries = 0

    def handle(self, args):
        record("start", args["n"])
        time.sleep(20)


registry = jobrunner.Registry()
for worker in (Record, AlwaysFails, Slow, TooSlow):
    registry.register(worker)

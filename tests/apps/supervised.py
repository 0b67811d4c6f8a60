"""Job bodies and a middleware shared by the process-level test apps (pg_app, redis_app).

Each app subclasses these with its own enqueuer. Environment: TEST_QUEUE (the queue),
TEST_OUT (each run appends a line; the middleware writes to TEST_OUT + ".mw").
"""

import os
import signal
import time

QUEUE = os.environ.get("TEST_QUEUE", "default")
OUT = os.environ.get("TEST_OUT", "/dev/null")
MIDDLEWARE_OUT = OUT + ".mw" if OUT != "/dev/null" else OUT


def record(*fields, path=None):
    # One short write with O_APPEND: lines from several children never interleave.
    with open(path or OUT, "a") as out:
        out.write(" ".join(str(f) for f in fields) + "\n")


class RecordJob:
    def handle(self, args):
        record("ran", args["n"], time.time(), os.getpid())


class AlwaysFailsJob:
    max_retries = 1

    @classmethod
    def backoff(cls, retry_count):
        return 0

    def handle(self, args):
        record("fail", args["n"], time.time())
        raise ValueError(f"boom {args['n']}")


class SlowJob:
    timeout = 30

    def handle(self, args):
        record("start", args["n"], os.getpid())
        time.sleep(args["seconds"])
        record("end", args["n"])


class TooSlowJob:
    """Runs past its timeout: the child's alarm raises JobTimeout in it."""

    timeout = 1
    max_retries = 0

    def handle(self, args):
        record("start", args["n"], os.getpid())
        time.sleep(20)
        record("end", args["n"])


class IgnoresAlarmJob:
    """Runs past its timeout with SIGALRM blocked: only the supervisor's SIGKILL ends it."""

    timeout = 1
    max_retries = 0

    def handle(self, args):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        record("start", args["n"], os.getpid())
        time.sleep(30)
        record("end", args["n"])


class DiesOnceJob:
    """The first run waits to be killed; later runs succeed at once."""

    success_action = "archive"      # pgmq: the archive keeps read_ct and the failure headers

    @classmethod
    def backoff(cls, retry_count):
        return 0

    def handle(self, args):
        marker = f"{OUT}.{args['n']}.started"
        if not os.path.exists(marker):
            open(marker, "w").close()
            record("start", args["n"], os.getpid())
            time.sleep(30)
        record("ran", args["n"], time.time(), os.getpid())


class RecordAttempts:
    """Middleware: one line per hook, so tests see attempts and outcomes across children."""

    def before(self, job):
        record("before", job.worker_name, _n(job), job.attempt, path=MIDDLEWARE_OUT)

    def on_error(self, job, error):
        record("error", job.worker_name, _n(job), type(error).__name__, job.attempt,
               path=MIDDLEWARE_OUT)

    def after(self, job, outcome):
        record("after", job.worker_name, _n(job), outcome.value, job.attempt,
               path=MIDDLEWARE_OUT)


def _n(job):
    return job.args.get("n") if isinstance(job.args, dict) else None

"""Workers for the fault-injection tests (``test_faults.py``) and ``scripts/soak.py``.

Environment:
    TEST_BACKEND  "pgmq" (default) or "sidekiq": which enqueuer the workers use
    TEST_QUEUE    the main queue; ``Staged`` jobs use ``<TEST_QUEUE>_stage``
    FAULT_OUT     (else TEST_OUT) each completed run appends ``ran <n> <pid>``; stage markers are
                  ``<FAULT_OUT>.<n>.<stage>`` (holding the pid of the child that reached it)
    FAULT_FAST    "1": short pgmq leases (LEASE_MARGIN 1 s) and a fast Sidekiq housekeeper
                  (beat 0.3 s, poll ~0.3 s, heartbeat TTL 2 s, orphan scan every 1 s), so lease
                  and heartbeat expiry take seconds. Only the timings change, not the code paths.

``Staged`` pauses its first run at one stage, so a test can SIGKILL the child right there:
    fetch  in a middleware ``before``: the job is fetched and reported, ``handle`` not called
    run    inside ``handle``
    ack    in the consumer's ``ack``/``ack_later`` (patched here): ``handle`` returned, the
           ack not yet made
"""

import os
import signal
import time

import jobrunner
from jobrunner.backends.pgmq import backend as pgmq_module
from jobrunner.backends.pgmq.consumer import PgmqConsumer
from jobrunner.backends.sidekiq.backend import SidekiqConsumer
from jobrunner.backends.sidekiq.housekeeper import SidekiqHousekeeper

BACKEND = os.environ.get("TEST_BACKEND", "pgmq")
QUEUE = os.environ.get("TEST_QUEUE", "default")
STAGE_QUEUE = QUEUE + "_stage"
OUT = os.environ.get("FAULT_OUT") or os.environ.get("TEST_OUT", "/dev/null")
ENQUEUER = jobrunner.SidekiqEnqueuer if BACKEND == "sidekiq" else jobrunner.PgEnqueuer

if os.environ.get("FAULT_FAST") == "1":
    pgmq_module.LEASE_MARGIN = 1
    SidekiqHousekeeper.beat_interval = 0.3
    SidekiqHousekeeper.poll_average = 0.3
    SidekiqHousekeeper.heartbeat_ttl = 2
    SidekiqHousekeeper.orphan_interval = 1.0

if os.environ.get("FAULT_LONG_FETCH") == "1":
    # An idle child blocks 5 s per fetch instead of 1: a test that freezes it mid-fetch
    # then has time to enqueue a job that the frozen fetch takes.
    _fetch = SidekiqConsumer.fetch
    SidekiqConsumer.fetch = lambda self, timeout, wake=None, limit=1: _fetch(
        self, max(timeout, 5.0), wake, limit)


def record(*fields):
    if OUT == "/dev/null":
        return
    with open(OUT, "a") as out:           # one short O_APPEND write: lines never interleave
        out.write(" ".join(str(f) for f in fields) + "\n")


def pause_once(n, stage, seconds=3.5):
    """The first time job ``n`` reaches ``stage``: leave a marker with our pid and wait."""
    marker = f"{OUT}.{n}.{stage}"
    if os.path.exists(marker):
        return
    with open(marker + ".tmp", "w") as handle:
        handle.write(str(os.getpid()))
    os.rename(marker + ".tmp", marker)
    time.sleep(seconds)


def _stage(job):
    args = job.args if isinstance(job.args, dict) else {}
    return args.get("n"), args.get("stage")


class Base(jobrunner.Worker):
    enqueuer = ENQUEUER
    queue = QUEUE
    timeout = 3
    max_retries = 25

    @classmethod
    def backoff(cls, retry_count):
        return 0


class Record(Base):
    """Runs for ``seconds`` (default 0), then records that it ran."""

    def handle(self, args):
        if args.get("seconds"):
            record("start", args["n"], os.getpid())
            time.sleep(args["seconds"])
        record("ran", args["n"], os.getpid())


class Staged(Base):
    """Short timeout: a short pgmq lease, so jobs a killed child had prefetched come back soon."""

    queue = STAGE_QUEUE
    timeout = 4

    def handle(self, args):
        if args.get("stage") == "run":
            pause_once(args["n"], "run")
        record("ran", args["n"], os.getpid())


class Fragile(Record):
    """No retries: a run charged to it that it never had would bury it unrun."""

    max_retries = 0


class Poison(Base):
    """Its child dies on every run, as an OOM kill or a segfault would do it."""

    max_retries = 2

    def handle(self, args):
        record("poison", args["n"], os.getpid())
        os.kill(os.getpid(), signal.SIGKILL)


class PauseBeforeRun:
    def before(self, job):
        n, stage = _stage(job)
        if stage == "fetch":
            pause_once(n, "fetch")


def _pause_before_ack(ack):
    def patched(self, job):
        n, stage = _stage(job)
        if stage == "ack":
            pause_once(n, "ack")
        return ack(self, job)
    patched.__wrapped__ = ack
    return patched


for _consumer in (PgmqConsumer, SidekiqConsumer):
    for _name in ("ack", "ack_later"):     # ack_later: acks sent with the next fetch
        _method = getattr(_consumer, _name, None)
        if _method is not None and not hasattr(_method, "__wrapped__"):
            setattr(_consumer, _name, _pause_before_ack(_method))

registry = jobrunner.Registry()
for worker in (Record, Staged, Fragile, Poison):
    registry.register(worker)
registry.add_middleware(PauseBeforeRun())

"""The job envelope every backend hands to a child, and the outcome a child reports back."""

import enum
import json
import os
import time
import uuid

import attr


@attr.s(frozen=True, kw_only=True, slots=True)
class Job:
    """One delivery of one job, as read from a backend.

    A backend builds it from its wire format; the child only reads it. When the payload could
    not be understood, ``problem`` says why and the other fields hold what could be salvaged.
    """

    #: The job's id: the pgmq envelope's ``metadata.id`` or Sidekiq's ``jid``.
    id = attr.ib(default=None)
    #: The registered worker name (Sidekiq ``class``, Roadster ``worker_name``).
    worker_name = attr.ib(default=None)
    #: The queue the job was fetched from.
    queue = attr.ib()
    #: The JSON value handed to ``Worker.handle``.
    args = attr.ib(default=None)
    #: Which run this is: 1 on the first delivery.
    attempt = attr.ib(default=1)
    #: Retries allowed by the payload itself (Sidekiq ``retry: N``); None means the worker's own.
    max_retries = attr.ib(default=None)
    #: False when a job that runs out of retries is dropped rather than kept as dead
    #: (Sidekiq ``retry: false`` or ``dead: false``).
    keep_dead = attr.ib(default=True)
    #: Epoch seconds when the job entered its queue, when the backend knows it.
    enqueued_at = attr.ib(default=None)
    #: Why the payload cannot run (invalid JSON, missing field...); None for a good job.
    problem = attr.ib(default=None)
    #: The backend's own handle for acks and retries (pgmq msg_id, Sidekiq raw string...).
    receipt = attr.ib(default=None, repr=False)

    def log_context(self):
        """The fields that identify this job in a log line."""
        return {"job_id": self.id, "worker": self.worker_name, "queue": self.queue,
                "attempt": self.attempt}


class Outcome(enum.Enum):
    """What became of one run of a job."""

    DONE = "done"          # handle returned
    RETRY = "retry"        # failed, will run again later
    DEAD = "dead"          # failed for the last time, or could not run at all
    DISCARDED = "discarded"  # failed and its payload asked not to keep it (Sidekiq retry: false)
    REQUEUED = "requeued"  # put back unchanged (shutdown)


def new_job_id():
    """A UUIDv7 string: time-ordered, so ids sort by creation like Roadster's."""
    millis = int(time.time() * 1000)
    value = (millis & ((1 << 48) - 1)) << 80
    value |= int.from_bytes(os.urandom(10), "big") & ((1 << 80) - 1)
    value &= ~(0xF << 76)
    value |= 0x7 << 76                      # version 7
    value &= ~(0x3 << 62)
    value |= 0x2 << 62                      # RFC 4122 variant
    return str(uuid.UUID(int=value))


def check_json_args(worker_name, args):
    """Return ``args`` unchanged if it survives a JSON round trip, else raise TypeError.

    Tuples become lists and integer dict keys become strings in JSON, so those are refused too:
    the job would otherwise see different arguments from the ones it was given.
    """
    try:
        encoded = json.dumps(args, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{worker_name}: args must be JSON values (dict, list, str, int, float, bool, None); "
            f"got {args!r}: {exc}") from None
    if json.loads(encoded) != args:
        raise TypeError(
            f"{worker_name}: args must round-trip through JSON unchanged; {args!r} "
            f"comes back as {json.loads(encoded)!r}")
    return args



@attr.s(frozen=True, kw_only=True, slots=True)
class ErrorInfo:
    """Why a run failed, in the shape both backends store: class name, message, backtrace."""

    error_class = attr.ib()
    message = attr.ib()
    backtrace = attr.ib(factory=list)

    @classmethod
    def from_exception(cls, exc):
        import traceback
        return cls(error_class=type(exc).__name__, message=str(exc)[:10000],
                   backtrace=traceback.format_exception(type(exc), exc, exc.__traceback__)[-20:])

    def as_dict(self):
        return {"error_class": self.error_class, "error_message": self.message}


def crash_error(reason):
    """Why a run failed when its child never reported back; ``reason`` is the supervisor's."""
    if reason == "timeout":
        return ErrorInfo(error_class="JobTimeout",
                         message="killed by the supervisor: still running past its worker's "
                                 "timeout plus the grace period")
    if reason == "heartbeat":
        return ErrorInfo(error_class="jobrunner.ChildDied",
                         message="killed by the supervisor: the child stopped answering")
    return ErrorInfo(error_class="jobrunner.ChildDied",
                     message="the child process running this job died "
                             "(killed, out of memory or crashed)")

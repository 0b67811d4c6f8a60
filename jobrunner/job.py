"""The job envelope every backend hands to a child, and the outcome a child reports back."""

from __future__ import annotations

import enum
import json
import math
import os
import reprlib
import time
from typing import Any, Callable

import attr


#: The field of a job's payload (pgmq: of its headers) that carries a trace context from
#: the enqueue to the run: ``{"traceparent": ..., "tracestate": ...}`` (``docs/tracing.md``).
TRACE_FIELD = "trace_context"
#: The most entries and characters of a carried trace context that are kept.
TRACE_ENTRIES, TRACE_CHARS = 8, 512


def trace_context_of(value: Any) -> dict[str, str] | None:
    """The trace context a payload carries, as a small dict of strings, or None. Anyone can
    write to a queue: anything else (another type, too many or too long entries) is ignored."""
    if not isinstance(value, dict) or not value:
        return None
    kept = {key: text for key, text in list(value.items())[:TRACE_ENTRIES]
            if isinstance(key, str) and isinstance(text, str)
            and len(key) <= 64 and len(text) <= TRACE_CHARS}
    return kept or None


@attr.s(frozen=True, kw_only=True, slots=True)
class Job:
    """One delivery of one job, as read from a backend.

    A backend builds it from its wire format; the child only reads it. When the payload could
    not be understood, ``problem`` says why and the other fields hold what could be salvaged.
    """

    #: The job's id: the pgmq envelope's ``metadata.id`` or Sidekiq's ``jid``.
    id: str | None = attr.ib(default=None)
    #: The registered worker name (Sidekiq ``class``, Roadster ``worker_name``).
    worker_name: str | None = attr.ib(default=None)
    #: The queue the job was fetched from.
    queue: str = attr.ib()
    #: The JSON value handed to ``Worker.handle``.
    args: Any = attr.ib(default=None)
    #: Which run this is: 1 on the first delivery.
    attempt: int = attr.ib(default=1)
    #: Retries allowed by the payload itself (Sidekiq ``retry: N``); None means the worker's own.
    max_retries: int | None = attr.ib(default=None)
    #: Seconds after its first failure during which a failed run is retried (Sidekiq's
    #: ``retry_for``); None: no such window.
    retry_for: float | None = attr.ib(default=None)
    #: Epoch seconds of the job's first failure (Sidekiq's ``failed_at``); None before one.
    first_failed_at: float | None = attr.ib(default=None)
    #: True when ``retry_for`` alone decides, whatever the retry count (Sidekiq 8.1 on);
    #: False when the count must allow a retry too.
    window_only: bool = attr.ib(default=False)
    #: False when a job that runs out of retries is dropped rather than kept as dead
    #: (Sidekiq ``retry: false`` or ``dead: false``).
    keep_dead: bool = attr.ib(default=True)
    #: Epoch seconds when the job entered its queue, when the backend knows it.
    enqueued_at: float | None = attr.ib(default=None)
    #: Why the payload cannot run (invalid JSON, missing field...); None for a good job.
    problem: str | None = attr.ib(default=None)
    #: The backend's own handle for acks and retries (pgmq msg_id, Sidekiq raw string...).
    receipt: Any = attr.ib(default=None, repr=False)
    #: What the enqueuer carried for tracing (W3C ``traceparent``/``tracestate``), or None.
    trace_context: dict[str, str] | None = attr.ib(default=None, repr=False)

    def log_context(self) -> dict[str, Any]:
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
    ERROR = "error"        # ran, but what became of it could not be written (the backend
                           # went away while settling): it will run again


def new_job_id() -> str:
    """A UUIDv7 string: time-ordered, so ids sort by creation like Roadster's."""
    return new_job_ids(1)[0]


def new_job_ids(count: int) -> list[str]:
    """``count`` UUIDv7 strings sharing one clock reading and one read of random bytes.

    Layout: 48 bits of Unix milliseconds, version 7, 12 random bits, the RFC 4122 variant
    (binary 10), then 62 random bits.
    """
    clock = "%012x" % (time.time_ns() // 1_000_000 & 0xFFFFFFFFFFFF)
    head = f"{clock[:8]}-{clock[8:]}-7"
    rand = os.urandom(10 * count).hex()
    ids = []
    for start in range(0, 20 * count, 20):
        r = rand[start:start + 20]
        ids.append(f"{head}{r[:3]}-{_VARIANT_NIBBLE[r[3]]}{r[4:7]}-{r[7:19]}")
    return ids


#: A random hex digit mapped onto 8, 9, a or b: the variant bits 10 plus two random bits.
_VARIANT_NIBBLE = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def _compact_encoder():
    """Compact JSON that keeps non-ASCII text as UTF-8, like Ruby's ``JSON.generate``.

    ``JSONEncoder.encode`` builds a new C encoder on every call, which costs more than encoding
    a small job's args; one prebuilt C encoder (where the interpreter has it) is made once.
    It skips the circular-reference check: ``encode_args`` only encodes values it has walked.
    """
    encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if json.encoder.c_make_encoder is None:
        return encoder.encode
    make = json.encoder.c_make_encoder(None, encoder.default, json.encoder.encode_basestring,
                                       None, ":", ",", False, False, False)
    return lambda value: "".join(make(value, 0))


compact_json: Callable[[Any], str] = _compact_encoder()


def encode_args(worker_name: str, args: Any) -> str:
    """``args`` as compact JSON text, or TypeError naming the worker and the value.

    Only values that come back unchanged from JSON pass: a tuple would come back a list and an
    integer dict key a string, so the job would see different arguments from the ones it was
    given. Plain values are recognised by a quick walk; anything else gets the full round trip,
    which also writes the error message.
    """
    try:
        plain = _plain_json(args)
    except RecursionError:              # nested too deep, or a value that contains itself
        plain = False
    if not plain:
        _check_round_trip(worker_name, args)
    text = compact_json(args)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise TypeError(f"{worker_name}: args must be valid Unicode text; {_short_repr(args)} "
                            f"holds a lone surrogate: {exc}") from None
    return text


def _plain_json(value):
    """True when ``value`` is built only from exact JSON types (the common, fast case)."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not _plain_json(item):
                return False
        return True
    if kind is list:
        for item in value:
            if not _plain_json(item):
                return False
        return True
    return False


def _check_round_trip(worker_name, args):
    try:
        encoded = json.dumps(args, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise TypeError(
            f"{worker_name}: args must be JSON values (dict, list, str, int, float, bool, None); "
            f"got {_short_repr(args)}: {exc}") from None
    back = json.loads(encoded)
    if back != args:
        raise TypeError(
            f"{worker_name}: args must round-trip through JSON unchanged; {_short_repr(args)} "
            f"comes back as {_short_repr(back)}")


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 200


def _short_repr(value):
    """``repr`` for an error message, bounded in length and depth."""
    return _REPR.repr(value)


#: Lines of a traceback an ``ErrorInfo`` keeps at most: the end of it, where the error was raised.
MAX_BACKTRACE_LINES = 200


@attr.s(frozen=True, kw_only=True, slots=True)
class ErrorInfo:
    """Why a run failed, in the shape both backends store: class name, message, backtrace.

    ``backtrace`` is the traceback's frames as lines, as Python prints them (the raise is at
    the end), without the ``Class: message`` line: the message is stored on its own, and kept
    out of the backtrace because whatever raised may have put a job's args in it, and
    Sidekiq's Web UI shows a backtrace without escaping it. ``keep`` is the worker's
    ``backtrace`` option: how much of it a backend stores. ``report`` is the whole traceback
    as Python prints it, chained exceptions included, for the log only.
    """

    error_class: str = attr.ib()
    message: str = attr.ib()
    backtrace: list[str] = attr.ib(factory=list)
    keep: bool | int = attr.ib(default=True)
    report: str = attr.ib(default="", repr=False)

    @classmethod
    def from_exception(cls, exc: BaseException, keep: bool | int = True,
                       skip: int = 0) -> ErrorInfo:
        """The error of ``exc``; ``skip`` leaves out that many outer frames (the runner's own
        frame that called the job, which says nothing about the job's failure)."""
        import traceback
        trace = exc.__traceback__
        for _ in range(skip):
            trace = trace.tb_next if trace is not None and trace.tb_next else trace
        frames = traceback.format_tb(trace)
        lines = [line for chunk in frames for line in chunk.rstrip("\n").split("\n")]
        report = "".join(traceback.format_exception(type(exc), exc, trace))
        return cls(error_class=type(exc).__name__, message=str(exc)[:10000],
                   backtrace=["Traceback (most recent call last):"]
                   + lines[-MAX_BACKTRACE_LINES + 1:], keep=keep, report=report.rstrip())

    def stored_backtrace(self, option: object = None) -> list[str]:
        """The lines a backend stores: ``option`` (a payload's own Sidekiq ``backtrace``) when
        given, else ``keep``. True keeps them all, a number the last that many (the lines
        nearest the raise, as Sidekiq's number keeps the innermost frames), anything else
        none."""
        choice = self.keep if option is None else option
        if choice is True:
            return list(self.backtrace)
        if isinstance(choice, int) and not isinstance(choice, bool) and choice > 0:
            return self.backtrace[-choice:]
        return []

    def as_dict(self) -> dict[str, str]:
        return {"error_class": self.error_class, "error_message": self.message}


def crash_error(reason: str | None) -> ErrorInfo:
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

"""Sidekiq's wire format (6.4, 7.x, 8.x) as pure functions: keys, job JSON, failure fields.

Nothing here does I/O, so every rule of Sidekiq's format that is about the *shape* of data
(``docs/design.md``, "Wire formats") can be unit-tested without Redis. ``backend.py``
documents the keys themselves.
"""

import base64
import codecs
import datetime
import hashlib
import json
import os
import re
import zlib

from jobrunner.job import TRACE_FIELD, Job, trace_context_of
from jobrunner.worker import Worker
from jobrunner.backends.sidekiq.versions import DEFAULT_VERSION, SidekiqVersion

#: Retries Sidekiq allows when a payload says ``retry: true`` and no number (its max_retries).
DEFAULT_MAX_RETRIES = 25
#: Dead set retention, exactly Sidekiq's: 180 days (and ZREMRANGEBYRANK 0 -10000 in the Lua,
#: which keeps 9,999 entries).
DEAD_TIMEOUT = 180 * 24 * 3600
#: Daily ``stat:*:<date>`` keys live five years, renewed at every flush.
STAT_DAY_TTL = 157680000
#: The error_message limit Sidekiq applies.
MESSAGE_LIMIT = 10000
#: Class name used for a payload that is not a job hash, when it is parked in ``dead``.
INVALID_PAYLOAD_CLASS = "jobrunner.InvalidPayload"
#: How ``load_item`` starts its reason for text that is not JSON at all.
INVALID_JSON = "invalid JSON"
#: Bytes of a payload that is not a job kept whole in ``dead``; a larger one is kept as an
#: excerpt of ``EXCERPT_BYTES`` with its size, so one hostile push cannot fill Redis twice.
KEEP_WHOLE_BYTES = 64 * 1024
#: Bytes of a bad payload shown (``dead`` excerpts, ``jobrunner dead list``).
EXCERPT_BYTES = 1000
#: Timestamps above this are milliseconds (Sidekiq 8) rather than seconds.
MILLIS_THRESHOLD = 1e11

INFLIGHT_SET = "jobrunner:inflight"
INFLIGHT_PREFIX = "jobrunner:inflight:"


# -- keys ---------------------------------------------------------------------------------

def queue_key(queue):
    return "queue:" + queue


def inflight_key(child_id):
    return INFLIGHT_PREFIX + child_id


def child_of_inflight_key(key):
    return key[len(INFLIGHT_PREFIX):]


def owner_identity(child_id):
    """The supervisor identity ``"<host>:<pid>:<nonce>"`` of a child id (``...:<childpid>``)."""
    return child_id.rsplit(":", 1)[0]


def stat_keys(now):
    """The four counter keys Sidekiq's heartbeat increments; the date is the UTC day of ``now``."""
    day = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).strftime("%Y-%m-%d")
    return ("stat:processed", "stat:failed", f"stat:processed:{day}", f"stat:failed:{day}")


# -- JSON ---------------------------------------------------------------------------------

def encode(item):
    """Compact UTF-8 JSON like Ruby's ``JSON.generate``; key order is kept."""
    return json.dumps(item, separators=(",", ":"), ensure_ascii=False)


#: Lone surrogates that ``surrogateescape`` did not make (it only makes U+DC80..U+DCFF).
_NOT_ESCAPED_BYTES = re.compile("[\ud800-\udc7f\udd00-\udfff]")


def _wire_errors(exc):
    """Undo ``surrogateescape`` (bytes that were not UTF-8 go back as they came); any other
    lone surrogate, which only a JSON ``\\uXXXX`` escape can produce, is written as that escape.

    The encoder hands over a whole run of surrogates at once (all of a payload of bad bytes),
    so the run is converted by the C codecs, never a character at a time in Python."""
    run = _NOT_ESCAPED_BYTES.sub(lambda m: "\\u%04x" % ord(m.group()),
                                 exc.object[exc.start:exc.end])
    return run.encode("utf-8", "surrogateescape"), exc.end


codecs.register_error("jobrunner.sidekiq", _wire_errors)


def wire(value):
    """``value`` as bytes for Redis when it is text; exact for payloads read with
    ``surrogateescape`` (hiredis encodes str strictly, so we must do it ourselves)."""
    return value.encode("utf-8", "jobrunner.sidekiq") if isinstance(value, str) else value


def new_jid():
    """12 random bytes as 24 lowercase hex characters, like Sidekiq's ``SecureRandom.hex(12)``."""
    return new_jids(1)[0]


def new_jids(count):
    """``count`` jids (see ``new_jid``) from one read of the system's random source."""
    text = os.urandom(12 * count).hex()
    return [text[start:start + 24] for start in range(0, 24 * count, 24)]


def client_payloads(worker, encoded_args, now, enqueued=True, extra=None):
    """``(jids, payloads)``: the job JSON Sidekiq's client writes, one per encoded args text.

    The hash is ``class, args, queue, retry, jid, created_at[, enqueued_at]`` (then ``extra``'s
    keys), written as ``encode`` would write it. Only the args and the jid differ between the
    jobs of one push, so the rest is encoded once and each payload is joined around them.
    ``enqueued`` is False for the ``schedule`` set. ``retry`` is written explicitly (a Ruby
    server that lacks the class drops a job without it), except for a stub (``retry_option``).
    """
    head = '{"class":' + encode(worker.name) + ',"args":['
    retry = retry_option(worker)
    middle = ('],"queue":' + encode(worker.queue)
              + ('' if retry is None else ',"retry":' + encode(retry)) + ',"jid":"')
    tail = '","created_at":' + encode(now)
    if enqueued:
        tail += ',"enqueued_at":' + encode(now)
    if extra:
        tail += "," + encode(extra)[1:-1]
    tail += "}"
    jids = new_jids(len(encoded_args))
    return jids, [f"{head}{args}{middle}{jid}{tail}" for args, jid in zip(encoded_args, jids)]


def retry_option(worker):
    """The ``retry`` a push writes for ``worker``: its ``max_retries``, or None (written not at
    all) for a stub of a Ruby class, a worker with no ``handle`` of its own, that does not set
    ``max_retries`` itself: there the Ruby class's own ``sidekiq_options retry:`` must apply,
    which a payload's ``retry`` would override."""
    if getattr(worker, "handle", None) is not Worker.handle:
        return worker.max_retries
    declared = any("max_retries" in vars(cls) for cls in worker.__mro__
                   if cls is not Worker and issubclass(cls, Worker))
    return worker.max_retries if declared else None


def read_time(value):
    """Epoch seconds from a Sidekiq timestamp in seconds (6.x) or milliseconds (8.x)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value / 1000.0 if value > MILLIS_THRESHOLD else float(value)


def load_item(raw):
    """``(item, problem)``: the job hash of ``raw``, or None and why it is not one."""
    try:
        item = json.loads(raw)
    except (TypeError, ValueError) as exc:
        return None, f"{INVALID_JSON}: {exc}"
    except RecursionError:
        return None, f"{INVALID_JSON}: nested too deeply to decode"
    if not isinstance(item, dict):
        return None, f"payload is JSON {type(item).__name__}, not an object"
    return item, None


# -- parsing a fetched job ----------------------------------------------------------------

def payload_digest(raw):
    """A short fingerprint of a raw payload, to name one that has no jid."""
    return hashlib.sha1(raw.encode("utf-8", "surrogatepass")).hexdigest()[:20]


#: The version ``parse`` follows when it is given none.
NEWEST = SidekiqVersion.parse(DEFAULT_VERSION)


def parse(raw, queue, version=NEWEST):
    """The ``Job`` for the raw payload ``raw`` fetched from ``queue``; never raises.

    ``receipt`` is always ``raw`` itself: the consumer acks and requeues by exact value.
    ``version`` (a ``SidekiqVersion``) says how a ``retry_for`` window combines with the count.
    """
    item, problem = load_item(raw)
    if item is None:
        return Job(queue=queue, problem=problem, receipt=raw)
    jid = item.get("jid")
    worker_name = item.get("class")
    fields = {"id": str(jid) if isinstance(jid, (str, int)) and not isinstance(jid, bool) else None,
              "worker_name": worker_name if isinstance(worker_name, str) and worker_name else None,
              "queue": queue, "receipt": raw, "attempt": attempt_of(item),
              "enqueued_at": read_time(item.get("enqueued_at")),
              "trace_context": trace_context_of(item.get(TRACE_FIELD))}
    max_retries, keep_dead = retry_policy(item)
    fields.update(max_retries=max_retries, keep_dead=keep_dead)
    fields.update(retry_window(item, version))
    if not isinstance(worker_name, str) or not worker_name:
        return Job(problem=f"'class' must be a non-empty string, got {worker_name!r}", **fields)
    args = item.get("args")
    if args is None:
        # Sidekiq calls perform() with no arguments; with the one-element rule that is handle([]).
        args = []
    if not isinstance(args, list):
        return Job(problem=f"'args' must be a JSON array, got {type(args).__name__}", **fields)
    return Job(args=args[0] if len(args) == 1 else args, **fields)


def attempt_of(item):
    """Which run this is: 1 before any failure; ``retry_count`` is 0 after the first failure."""
    count = item.get("retry_count")
    if isinstance(count, bool) or not isinstance(count, int):
        return 1
    # The Web UI's "retry now" subtracts 1, so a count of -1 is possible.
    return max(1, count + 2)


def retry_policy(item):
    """``(max_retries, keep_dead)`` from the payload's ``retry`` and ``dead`` options.

    bool is tested before int because ``True`` is an int in Python. ``retry: true`` and an
    absent ``retry`` both give None: the worker's own ``max_retries`` decides.
    """
    option = item.get("retry")
    keep_dead = item.get("dead") is not False
    if option is False:
        return 0, False
    if option is True or option is None:
        return None, keep_dead
    if isinstance(option, int):
        return max(0, option), keep_dead
    # Ruby treats any other truthy value ("yes", 2.5) as true without a number.
    return None, keep_dead


def retry_window(item, version=NEWEST):
    """The ``Job`` fields of a payload's ``retry_for`` window: none without a number there, or
    with ``retry: false`` (which wins: such a job is never retried). ``failed_at`` counts only
    once ``retry_count`` is set, as a first failure writes a new one; seconds or milliseconds."""
    window = item.get("retry_for")
    if item.get("retry") is False or isinstance(window, bool) \
            or not isinstance(window, (int, float)):
        return {}
    count = item.get("retry_count")
    first = read_time(item.get("failed_at")) \
        if isinstance(count, int) and not isinstance(count, bool) else None
    return {"retry_for": float(window), "first_failed_at": first,
            "window_only": version.retry_for_replaces_count}


# -- failure fields -----------------------------------------------------------------------

def failed_item(item, error, now, fetched_queue):
    """A copy of ``item`` with Sidekiq's failure fields set; unknown keys are kept.

    ``error`` is a ``jobrunner.job.ErrorInfo``.
    """
    item = dict(item)
    retry_queue = item.get("retry_queue")
    item["queue"] = retry_queue if isinstance(retry_queue, str) and retry_queue else fetched_queue
    item["error_message"] = _scrub(str(error.message))[:MESSAGE_LIMIT]
    item["error_class"] = _scrub(str(error.error_class))
    count = item.get("retry_count")
    if count is not None and isinstance(count, int) and not isinstance(count, bool):
        item["retried_at"] = now
        item["retry_count"] = count + 1
    else:
        item["failed_at"] = now
        item["retry_count"] = 0
    # A Ruby class's ``sidekiq_options backtrace:`` travels in the payload and wins over the
    # worker's own option, as in Sidekiq.
    lines = error.stored_backtrace(item.get("backtrace"))
    if lines:
        item["error_backtrace"] = encode_backtrace(lines)
    else:
        item.pop("error_backtrace", None)
    return item


def encode_backtrace(lines):
    """Sidekiq's ``error_backtrace``: MIME base64 (60-char lines) of zlib-deflated JSON."""
    packed = base64.b64encode(zlib.compress(json.dumps(lines).encode("utf-8"))).decode("ascii")
    return "".join(packed[i:i + 60] + "\n" for i in range(0, len(packed), 60))


def decode_backtrace(text):
    """The list of lines in an ``error_backtrace`` value (either format Sidekiq reads)."""
    if isinstance(text, list):
        return text
    return json.loads(zlib.decompress(base64.b64decode(text)))


def invalid_item(raw, reason, queue, now):
    """A job hash that stands for a payload that is not one, so Sidekiq's dead set can show it.

    Sidekiq loses such payloads; we park them in ``dead`` wrapped, with the raw text as the
    only argument so nothing is lost.
    """
    return {"class": INVALID_PAYLOAD_CLASS, "args": [raw], "queue": queue, "jid": new_jid(),
            "created_at": now, "retry": False, "error_class": "InvalidPayload",
            "error_message": _scrub(reason)[:MESSAGE_LIMIT], "failed_at": now, "retry_count": 0}


def excerpt(raw, limit=EXCERPT_BYTES):
    """The first ``limit`` bytes of ``raw`` as printable text: bytes that are not UTF-8 are
    written ``\\xNN``, and a cut one ends in ``…``."""
    head = wire(raw[:limit])
    text = head[:limit].decode("utf-8", "backslashreplace")
    return text + "…" if len(head) > limit or len(raw) > limit else text


def bad_member(raw, reason, queue, now):
    """The ``dead`` set member for a payload that is not a job: raw text for small invalid
    JSON (as Sidekiq does), a wrapper for other small ones, and for any larger than
    ``KEEP_WHOLE_BYTES`` a wrapper holding an excerpt, its size and the reason."""
    size = len(wire(raw))
    if size <= KEEP_WHOLE_BYTES:
        if reason.startswith(INVALID_JSON):
            return raw
        return encode(invalid_item(raw, reason, queue, now))
    item = invalid_item(excerpt(raw), f"{reason} (payload of {size} bytes; the first "
                                      f"{EXCERPT_BYTES} are kept)", queue, now)
    item["payload_bytes"] = size
    return encode(item)


def dead_member(job, error, now):
    """The ``dead`` set member for ``job``: ``bad_member`` for a payload that is not a job,
    else the job with its failure fields."""
    item, problem = load_item(job.receipt)
    if item is None or not isinstance(item.get("class"), str) or not item.get("class"):
        return bad_member(job.receipt, problem or job.problem, job.queue, now)
    return encode(failed_item(item, error, now, job.queue))


def due_member(raw, now):
    """``(queue, member)`` to push for a due ``schedule``/``retry`` entry, like a client push
    with a fresh ``enqueued_at``; queue None means the entry is not a job and goes dead."""
    item, problem = load_item(raw)
    if item is None:
        return None, bad_member(raw, problem, "default", now)
    queue = item.get("queue")
    if not isinstance(queue, str) or not queue:
        queue = "default"
        item["queue"] = queue
    item["enqueued_at"] = now
    return queue, encode(item)


def queue_of(raw, fallback):
    """The queue named inside a raw payload, else ``fallback``."""
    item, _ = load_item(raw)
    queue = item.get("queue") if item else None
    return queue if isinstance(queue, str) and queue else fallback


def _scrub(text):
    """Valid UTF-8 only, as Sidekiq scrubs messages (lone surrogates cannot be stored)."""
    return text.encode("utf-8", "replace").decode("utf-8")

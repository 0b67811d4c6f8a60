"""The messages on a child's pipe: one attrs class per kind, and their JSON lines.

On the wire a message is one JSON object per line, its kind in ``"t"`` and its fields beside
it (``{"t":"cut"}``, ``{"t":"beat","jobs":12}``). A receiver dispatches on ``kind`` to a
method named ``handle_<kind>``; a kind it has no handler for is ignored.

Child -> supervisor:  Ready, Beat, Batch, Cut, Dones, Recycle, Fatal; a housekeeper also
                      Recovered.

The per-job entries of ``Batch`` (``JobEntry``) and ``Dones`` (``Done``) are named tuples, on the
wire plain JSON arrays: a busy child makes hundreds of them per fetch.
Supervisor -> child:  Quiet, Stop; to a housekeeper also State and Recover.
"""

import json
from typing import Any, Dict, NamedTuple, Optional

import attr

_KINDS: Dict[str, type] = {}
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def message(kind: str):
    """Class decorator: an attrs message class sent as ``kind``."""
    def register(cls):
        cls = attr.s(kw_only=True, slots=True)(cls)    # not frozen: half the cost to make
        cls.kind = kind
        cls.wire_fields = tuple(a.name for a in attr.fields(cls))
        _KINDS[kind] = cls
        return cls
    return register


class JobEntry(NamedTuple):
    """One fetched job as the supervisor knows it: sent in a ``Batch`` before it runs, and
    the child's running job once its slot shows it started (``ChildRecord.running``).

    A named tuple, not an attrs class: a child sends one per job it fetches, and as a tuple it
    is cheap to make and goes on the pipe as a plain JSON array.
    """

    id: Any = None
    worker: Optional[str] = None
    queue: Optional[str] = None
    timeout: Optional[float] = None     # the worker's, seconds; None: no limit
    token: Any = None                   # what the housekeeper needs to recover it
    bad: bool = False                   # a payload that cannot run: it never "starts"


def _job_entries(jobs):
    """Batch entries as ``JobEntry``: from the wire (arrays), or given as dicts or entries."""
    entries = []
    for job in jobs or ():
        if isinstance(job, JobEntry):
            entries.append(job)
        elif isinstance(job, dict):
            entries.append(JobEntry(**job))
        else:
            entries.append(JobEntry(*job))
    return entries


@message("ready")
class Ready:
    """The child is set up (its backend connection made) and starts work."""


@message("beat")
class Beat:
    """The child is alive; ``jobs``: how many it has finished so far."""

    jobs: Optional[int] = attr.ib(default=None)


@message("batch")
class Batch:
    """The jobs of one fetch (``JobEntry``), before any runs (``slot.py``): ``first`` is the
    slot index of ``jobs[0]``."""

    first: int = attr.ib(default=0)
    jobs: list = attr.ib(factory=list, converter=_job_entries)


@message("cut")
class Cut:
    """The unstarted rest of the last batch went back to its queue."""


class Done(NamedTuple):
    """One job that ended, as an entry of ``Dones``: its outcome (done, retry, dead, discarded,
    requeued, error) and how long it ran, in whole microseconds (compact on the wire)."""

    id: Any = None
    worker: Optional[str] = None
    queue: Optional[str] = None
    outcome: Optional[str] = None
    micros: Any = None

    @property
    def duration(self) -> Optional[float]:
        """Seconds; None when the child wrote no whole number (its pipe is not trusted)."""
        micros = self.micros
        if isinstance(micros, int) and not isinstance(micros, bool):
            return micros / 1e6
        return None


def _done_entries(jobs):
    """``Dones`` entries as ``Done``: from the wire (arrays), or given as entries."""
    return [job if isinstance(job, Done) else Done(*job) for job in jobs or ()]


@message("dones")
class Dones:
    """The jobs that ended since the child's last message (``Done`` entries, oldest first):
    one message per batch, not one per job (``Channel.defer``)."""

    jobs: list = attr.ib(factory=list, converter=_done_entries)


@message("recycle")
class Recycle:
    """The child asks to be replaced (``max_jobs`` or ``max_rss_mb`` reached)."""

    jobs: Optional[int] = attr.ib(default=None)
    reason: Optional[str] = attr.ib(default=None)     # as ``process/recycle.py`` words it


@message("fatal")
class Fatal:
    """The child failed before it was ready: the error line and its traceback."""

    error: str = attr.ib(default="unknown error")
    traceback: str = attr.ib(default="")


@message("quiet")
class Quiet:
    """Fetch no new jobs; stay up."""


@message("stop")
class Stop:
    """Finish the job in hand (if any) and exit."""


@message("state")
class State:
    """The supervisor's snapshot for a housekeeper (``SupervisorState.as_dict()``)."""

    state: dict = attr.ib(factory=dict)


@message("recover")
class Recover:
    """Put back the jobs an exited worker held (``Housekeeper.recover`` has the rules)."""

    child_id: str = attr.ib()
    tokens: list = attr.ib(factory=list)
    crashed: bool = attr.ib(default=False)
    reason: Optional[str] = attr.ib(default=None)
    held: list = attr.ib(factory=list)
    finished: list = attr.ib(factory=list)
    serial: int = attr.ib(default=0)        # numbers the request for its ``Recovered``


@message("recovered")
class Recovered:
    """The housekeeper is done with the ``Recover`` request ``serial``: the supervisor may
    forget it. Until then it keeps the request and hands it to the next housekeeper if this
    one dies."""

    serial: int = attr.ib(default=0)


def encode(msg) -> bytes:
    """One message as its JSON line. Written out rather than with ``attr.asdict``, which
    costs several times more: a child sends one or two of these per fetch."""
    fields = {name: getattr(msg, name) for name in msg.wire_fields}
    fields["t"] = msg.kind
    return _dumps(fields).encode() + b"\n"


def encode_dones(entries: list) -> bytes:
    """The line of ``Dones(jobs=entries)``, the entries plain tuples in ``Done``'s field order:
    the line ``encode`` would write, without making a ``Done`` of each."""
    return _dumps({"jobs": entries, "t": Dones.kind}).encode() + b"\n"


def decode(value) -> Optional[object]:
    """A message from a decoded JSON line (a dict this takes over); None when it is not one we
    know (wrong shape, unknown kind, unknown or missing fields): nothing a child writes may
    crash its reader."""
    if not isinstance(value, dict):
        return None
    cls = _KINDS.get(value.pop("t", None))
    if cls is None:
        return None
    try:
        return cls(**value)
    except (TypeError, ValueError):      # a batch entry with unknown fields, say
        return None


def dispatch(receiver, msg, *context) -> None:
    """Call ``receiver.handle_<kind>(msg, *context)`` when the receiver has one."""
    handler = getattr(receiver, f"handle_{msg.kind}", None)
    if handler is not None:
        handler(msg, *context)

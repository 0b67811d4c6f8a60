"""Logging set-up: one line per event, a per-process prefix, text or JSON, the job's fields."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Callable, Iterable, Optional, TextIO

if TYPE_CHECKING:
    from jobrunner.job import Job

_LABEL = {"value": "supervisor"}
#: This process's pid, for held lines (``os.getpid`` is a system call, once per job there);
#: a forked child renews it before it runs anything.
_PID = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))

#: The job this process is running (a worker child sets it around each job), else None. A
#: context variable, so a thread the job starts does not claim the job's later lines.
_RUNNING_JOB: contextvars.ContextVar[Optional[Job]] = contextvars.ContextVar(
    "jobrunner_running_job", default=None)

#: The record attributes ``JobContextFilter`` adds for format strings ("-" outside a job).
JOB_FIELDS = ("job_id", "worker", "queue", "attempt")
_NO_JOB: dict = {}
_TAG = " [worker=%(worker)s id=%(job_id)s queue=%(queue)s attempt=%(attempt)s]"


def job_started(job: Job) -> contextvars.Token[Optional[Job]]:
    """Lines logged from now on, by any logger, are about ``job``; pass the result to
    ``job_ended``. One context-variable write: cheap enough for every job."""
    return _RUNNING_JOB.set(job)


def job_ended(token: contextvars.Token[Optional[Job]]) -> None:
    """Lines logged from now on are no longer about the job ``job_started`` named."""
    _RUNNING_JOB.reset(token)


class JobContextFilter(logging.Filter):
    """Gives each record the running job's fields; it never drops a record.

    ``job`` is the ``Job.log_context()`` dict (the JSON field), ``job_id``, ``worker``, ``queue``
    and ``attempt`` are for format strings ("-" outside a job), and ``job_tag`` is the text
    suffix `` [worker=… id=… queue=… attempt=…]`` ("" outside a job). A record that names its
    own ``job`` (the outcome lines do, their message says which job) keeps it and gets no tag.
    An attribute the record already has (from ``extra``) is left as it is.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        if "job_tag" in fields:
            return True           # another handler's filter has been here: the tag stands
        own = fields.get("job")
        running = _RUNNING_JOB.get()
        if own is None and running is not None:
            own = fields["job"] = running.log_context()
            fields["job_tag"] = _TAG % own
        else:
            fields["job_tag"] = ""
        context = own if isinstance(own, dict) else _NO_JOB
        for key in JOB_FIELDS:
            if key not in fields:
                fields[key] = context.get(key, "-")
        return True


class _LabelFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.label = _LABEL["value"]
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the job fields a log record carries."""

    def format(self, record: logging.LogRecord) -> str:
        exception = self.formatException(record.exc_info) if record.exc_info else None
        # label: the field _LabelFilter adds to every record
        return self.line(record.created, record.msecs, record.levelname,
                         record.label, record.process,  # type: ignore[attr-defined]
                         record.name, record.getMessage(), record.__dict__, exception)

    @staticmethod
    def line(created: float, msecs: float, levelname: str, label: str, pid: int | None,
             name: str, message: str, fields: dict, exception: str | None = None) -> str:
        """The line of one event, from its parts (``fields``: the record's extra fields)."""
        entry = {"time": round(created, 3), "level": levelname, "process": label, "pid": pid,
                 "logger": name, "message": message}
        for key in ("job", "outcome", "duration", "error"):
            if key in fields:
                entry[key] = fields[key]
        if exception:
            entry["exception"] = exception
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """The text format: ``<UTC time> <label>[<pid>] <LEVEL> <message>``; the time string is
    made once per second, not once per line.

    A line of another logger than jobrunner's names its logger before the message; a line
    logged during a job ends with the job's ``job_tag``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._second: int | None = None
        self._text = ""
        self._heads: dict[tuple, str] = {}    # (label, pid, level, logger) -> its part of a line

    def formatMessage(self, record: logging.LogRecord) -> str:
        # label and job_tag: the fields the handler's filters add to every record
        return self.line(record.created, record.msecs, record.levelname,
                         record.label, record.process,  # type: ignore[attr-defined]
                         record.name, record.message,
                         record.__dict__.get("job_tag", ""))

    def line(self, created: float, msecs: float, levelname: str, label: str, pid: int | None,
             name: str, message: str, job_tag: str = "") -> str:
        """The line of one event, from its parts. A child writes one per job: what repeats
        from line to line (the second, the part between the time and the message) is made
        once, and the milliseconds come from a table, not a format."""
        second = int(created)
        if second != self._second:
            self._second, self._text = second, time.strftime("%Y-%m-%dT%H:%M:%S",
                                                             time.gmtime(second))
        key = (label, pid, levelname, name)
        head = self._heads.get(key)
        if head is None:
            if len(self._heads) >= 256:      # an app that makes loggers without end
                self._heads.clear()
            prefix = "" if _is_jobrunners(name) else name + ": "
            head = self._heads[key] = f"Z {label}[{pid}] {levelname} {prefix}"
        millis = int(msecs)
        return (f"{self._text}.{_MILLIS[millis] if 0 <= millis < 1000 else millis}{head}"
                f"{message}{job_tag}")


#: "000" to "999", the milliseconds of a text line.
_MILLIS = tuple(f"{n:03d}" for n in range(1000))

#: Most held lines a handler keeps before it writes them anyway.
HOLD_LIMIT = 256


class _Handler(logging.StreamHandler):
    """jobrunner's own handler: told apart from the app's when ``setup`` looks at the root.

    A record logged with ``held=True`` (a child's line for a job that succeeded) is formatted at
    once but written with the next line that is not held, at ``release_held_lines`` (a child
    calls it before each fetch and at its batch's deadline), at ``flush`` or after
    ``HOLD_LIMIT`` lines: one write per batch of short jobs instead of one per job, in order.
    What a child killed outright loses is those lines of its current batch, at most the batch
    budget's worth (25 ms); the outcomes themselves are already in the backend.
    """

    def __init__(self, stream: TextIO):
        super().__init__(stream)
        self._held: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._held.append(self.format(record) + self.terminator)
            if getattr(record, "held", False) and len(self._held) < HOLD_LIMIT:
                return
            self._write_held()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def hold(self, line: str) -> None:
        """Hold ``line`` (formatted, without its newline) as ``emit`` holds a held record's."""
        self.acquire()
        try:
            self._held.append(line + self.terminator)
            if len(self._held) >= HOLD_LIMIT:
                self._write_held()
        finally:
            self.release()

    def _write_held(self) -> None:
        if self._held:
            self.stream.write("".join(self._held))
            self._held.clear()
            self.stream.flush()

    def flush(self) -> None:
        self.acquire()
        try:
            self._write_held()
            super().flush()
        finally:
            self.release()


def hold_line(logger: logging.Logger, level: int, message: str,
              fields: Callable[[], dict]) -> bool:
    """Hold ``message`` (formatted), with its extra ``fields`` (made only for a JSON line, by
    calling ``fields``), straight in jobrunner's own
    handler when nothing else could see the record: ``logger`` and its parent ``jobrunner``
    have no other handler and no filter, as ``setup`` leaves them. That skips making a
    ``LogRecord``, finding its caller and running the filters, which were most of the cost
    of a short job's line. The line is the one ``logger.log`` would write. Returns False
    (nothing done) when anything else is in the way: then log it through ``logging``."""
    handler = _sole_handler(logger)
    if handler is None or level < handler.level:
        return False
    now = time.time()
    msecs = (now - int(now)) * 1000
    name, label, pid = logger.name, _LABEL["value"], _PID[0]
    formatter = handler.formatter
    if isinstance(formatter, TextFormatter):
        line = formatter.line(now, msecs, logging.getLevelName(level), label, pid, name,
                              message)
    else:
        line = JsonFormatter.line(now, msecs, logging.getLevelName(level), label, pid, name,
                                  message, fields())
    handler.hold(line)
    return True


def _sole_handler(logger: logging.Logger) -> _Handler | None:
    """jobrunner's handler, if it is the only thing ``logger``'s records reach."""
    own = logger.parent
    if (logger.handlers or logger.filters or logger.disabled or not logger.propagate
            or own is None or own.name != "jobrunner" or own.filters or own.disabled
            or len(own.handlers) != 1):
        return None
    handler = own.handlers[0]
    if type(handler) is not _Handler or len(handler.filters) != 2 \
            or type(handler.formatter) not in (TextFormatter, JsonFormatter):
        return None
    first, second = handler.filters
    if type(first) is not _LabelFilter or type(second) is not JobContextFilter:
        return None
    return handler


def release_held_lines() -> None:
    """Write the lines jobrunner's handlers hold (see ``_Handler``)."""
    for handler in logging.getLogger("jobrunner").handlers:
        if isinstance(handler, _Handler):
            handler.flush()


def setup(level: str | int = "INFO", fmt: str = "text", stream: TextIO | None = None) -> bool:
    """Send the logs to ``stream`` (stderr) in ``fmt``, at ``level``; called once in the
    supervisor, after the app's registry module is imported and before forking.

    jobrunner's own loggers always write through this handler, and only through it. Every other
    logger does too (with Python's warnings), unless the app configured logging itself: the
    root logger has a handler when this runs. Then the root's handlers and levels stay as the
    app made them, and each of those handlers only gains a ``JobContextFilter``. Returns
    whether the root logger took jobrunner's handler.
    """
    handler = _handler(fmt, stream or sys.stderr)
    level = level.upper() if isinstance(level, str) else level
    own = logging.getLogger("jobrunner")
    own.handlers[:] = [handler]
    own.setLevel(level)
    own.propagate = False
    _enable_own_loggers()
    root = logging.getLogger()
    app_handlers = [h for h in root.handlers if not isinstance(h, _Handler)]
    if app_handlers:
        _add_job_fields(app_handlers)
        return False
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)     # else a warning is a raw line amid the formatted ones
    return True


def _handler(fmt: str, stream: TextIO) -> logging.Handler:
    handler = _Handler(stream)
    handler.addFilter(_LabelFilter())
    handler.addFilter(JobContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    return handler


def _add_job_fields(handlers: Iterable[logging.Handler]) -> None:
    for handler in handlers:
        if not any(isinstance(f, JobContextFilter) for f in handler.filters):
            handler.addFilter(JobContextFilter())


def _enable_own_loggers() -> None:
    """Undo ``disabled`` on jobrunner's loggers: an app's ``dictConfig`` at import disables
    every logger that existed then (``disable_existing_loggers`` is its default), jobrunner's
    among them, and a runner whose own lines vanish cannot be seen into."""
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if _is_jobrunners(name) and isinstance(logger, logging.Logger):
            logger.disabled = False


def _is_jobrunners(logger_name: str) -> bool:
    return logger_name == "jobrunner" or logger_name.startswith("jobrunner.")


def set_label(label: str) -> None:
    """Name this process in every log line (``supervisor``, ``pgmq.1``, ...)."""
    _LABEL["value"] = label

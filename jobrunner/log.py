"""Logging set-up: one line per event, a per-process prefix, text or JSON."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

_LABEL = {"value": "supervisor"}


class _LabelFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.label = _LABEL["value"]
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the job fields a log record carries."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": round(record.created, 3), "level": record.levelname,
                 # label: the field _LabelFilter adds to every record
                 "process": record.label,  # type: ignore[attr-defined]
                 "pid": record.process, "logger": record.name,
                 "message": record.getMessage()}
        for key in ("job", "outcome", "duration", "error"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """The text format; the UTC time string is made once per second, not once per line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03dZ %(label)s[%(process)d] %(levelname)s "
                         "%(message)s", "%Y-%m-%dT%H:%M:%S")
        self._second: int | None = None
        self._text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            # datefmt is the one given in __init__, never None
            self._second, self._text = second, time.strftime(
                self.datefmt, time.gmtime(second))  # type: ignore[arg-type]
        return self._text


def setup(level: str | int = "INFO", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send jobrunner's logs to ``stream`` (stderr); called once in the supervisor before
    forking."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_LabelFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger("jobrunner")
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    root.propagate = False


def set_label(label: str) -> None:
    """Name this process in every log line (``supervisor``, ``pgmq.1``, ...)."""
    _LABEL["value"] = label

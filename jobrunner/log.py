"""Logging set-up: one line per event, a per-process prefix, text or JSON."""

import json
import logging
import sys
import time

_LABEL = {"value": "supervisor"}


class _LabelFilter(logging.Filter):
    def filter(self, record):
        record.label = _LABEL["value"]
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the job fields a log record carries."""

    def format(self, record):
        entry = {"time": round(record.created, 3), "level": record.levelname,
                 "process": record.label, "pid": record.process, "logger": record.name,
                 "message": record.getMessage()}
        for key in ("job", "outcome", "duration"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """The text format; the UTC time string is made once per second, not once per line."""

    def __init__(self):
        super().__init__("%(asctime)s.%(msecs)03dZ %(label)s[%(process)d] %(levelname)s "
                         "%(message)s", "%Y-%m-%dT%H:%M:%S")
        self._second = None
        self._text = ""

    def formatTime(self, record, datefmt=None):
        second = int(record.created)
        if second != self._second:
            self._second, self._text = second, time.strftime(self.datefmt, time.gmtime(second))
        return self._text


def setup(level="INFO", fmt="text", stream=None):
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


def set_label(label):
    """Name this process in every log line (``supervisor``, ``pgmq.1``, ...)."""
    _LABEL["value"] = label

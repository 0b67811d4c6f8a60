"""How the pages write values: times, durations, counts and a job's args (the templates'
filters). Every one returns plain text; the templates escape it."""

from __future__ import annotations

import datetime
import json
import time
from typing import Any

NONE = "—"
#: Characters of a job's args shown in a list row (the job page shows them all).
ARGS_IN_LIST = 200


def when(epoch: float | None) -> str:
    """Epoch seconds as a UTC time, to the second."""
    if epoch is None:
        return NONE
    moment = datetime.datetime.fromtimestamp(float(epoch), datetime.timezone.utc)
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def moment(value: Any) -> str:
    """An aware datetime (``Inspector.schedules``) or epoch seconds as a UTC time."""
    if isinstance(value, datetime.datetime):
        return when(value.timestamp())
    return when(value)


def duration(seconds: float | None) -> str:
    """``1h 02m``, ``3m 05s``, ``4.2s``."""
    if seconds is None:
        return NONE
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s"


def relative(epoch: float | None, now: float | None = None) -> str:
    """``in 3m 05s`` or ``3m 05s ago``."""
    if epoch is None:
        return NONE
    if isinstance(epoch, datetime.datetime):
        epoch = epoch.timestamp()
    delta = float(epoch) - (time.time() if now is None else now)
    return f"in {duration(delta)}" if delta >= 0 else f"{duration(-delta)} ago"


def number(value: Any) -> str:
    if value is None:
        return NONE
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def as_json(value: Any, indent: int | None = None) -> str:
    """A JSON value as text (args as stored: any JSON, shown, never interpreted)."""
    try:
        return json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=indent is not None)
    except (TypeError, ValueError):
        return repr(value)


def short_json(value: Any, limit: int = ARGS_IN_LIST) -> str:
    text = as_json(value)
    return text if len(text) <= limit else text[:limit] + "…"


FILTERS = {"when": when, "moment": moment, "duration": duration, "relative": relative,
           "number": number, "as_json": as_json, "short_json": short_json}

"""How the operator commands print: aligned tables, short durations and times, safe JSON."""

import datetime
import json
import re

#: Nesting of a job's args that is shown; Python's json cannot print values that nest close
#: to its recursion limit, so deeper args are shown as unreadable instead.
MAX_SHOWN_DEPTH = 100
#: ``error_class`` of a job that cannot be shown as it is stored (docs/operations.md).
UNREADABLE = "jobrunner.Unreadable"
#: Python keeps bytes that were not UTF-8 (and JSON's ``"\ud800"``) as lone surrogates, which
#: no encoding can write.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def out(text):
    """Print ``text`` with each lone surrogate as JSON's ``\\uXXXX`` escape (valid in JSON
    strings, readable as text): one odd byte in a stored job must not stop the output."""
    print(_LONE_SURROGATE.sub(lambda m: "\\u%04x" % ord(m.group()), text))


def emit_json(result):
    out(json.dumps(result, indent=2, ensure_ascii=False, default=str))


def _nests_deeper(value, limit):
    """True when lists and dicts in ``value`` nest more than ``limit`` deep; measured a level
    at a time, so no depth is too deep to measure."""
    level = [value]
    for _ in range(limit + 1):
        level = [inner for outer in level if isinstance(outer, (list, dict))
                 for inner in (outer.values() if isinstance(outer, dict) else outer)]
        if not level:
            return False
    return True


def showable(job):
    """``job`` (a job entry) as it can be printed: args nested too deeply for json make it
    unreadable, with the reason and the error it failed with."""
    if not _nests_deeper(job.get("args"), MAX_SHOWN_DEPTH):
        return job
    reason = f"args nest more than {MAX_SHOWN_DEPTH} deep; not shown"
    if job.get("error_message"):
        reason += f" (it died with {job.get('error_class')}: {job['error_message']})"
    return dict(job, args=None, error_class=UNREADABLE, error_message=reason)


def duration(seconds):
    """``0s``, ``4.2s``, ``3m05s``, ``2h10m``, ``3d04h``: short and still exact enough."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s".replace(".0s", "s")
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def ago(epoch, now):
    return "?" if epoch is None else duration(now - epoch) + " ago"


def until(epoch, now):
    """``in 3m05s`` for a time ahead, ``now`` for one passed."""
    if epoch is None:
        return "?"
    return "in " + duration(epoch - now) if epoch > now else "now"


def table(rows, right=()):
    """Rows of strings as aligned columns; columns in ``right`` are right-aligned."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [str(cell).rjust(w) if i in right else str(cell).ljust(w)
                 for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return lines


def utc(epoch):
    """``2026-12-02 04:20:59`` (UTC) for epoch seconds; ``?`` for a time no calendar has."""
    if epoch is None:
        return "-"
    try:
        moment = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    except (OverflowError, OSError, ValueError, TypeError):
        return "?"
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def cut(text, limit):
    """``text`` on one line, at most ``limit`` characters (``…`` where it was cut)."""
    text = " ".join(str(text).split())      # one line, whatever the message held
    return text if len(text) <= limit else text[:limit - 1] + "…"


def job_ident(job):
    """A job's id as the tables show it: the job id, with the msg_id where there is one."""
    ident = job["id"] or "-"
    if job.get("msg_id") is not None:
        ident = f"{ident} (msg {job['msg_id']})"
    return ident


def error_text(job):
    """``Class: message`` of a job entry's last error, or ``-``."""
    label = "unreadable" if job.get("error_class") == UNREADABLE else job.get("error_class")
    return ": ".join(str(p) for p in (label, job.get("error_message")) if p) or "-"


def args_text(args, limit=60):
    return cut(json.dumps(args, ensure_ascii=False), limit)

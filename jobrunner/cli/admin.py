"""The operator commands of the `jobrunner` CLI: stats, dead list|retry|delete, check.

The logic lives in ``jobrunner/ops/admin.py``; this module parses flags and prints. With
``--json`` each command prints one JSON object (``"schema": 1``), documented in full in
``docs/operations.md``:

stats::

    {"schema": 1, "generated_at": <epoch s>,
     "backends": {"<pgmq|sidekiq>": {
         "status": "ok" | "unavailable" | "skipped", "error": <str> | null,
         "totals": {"waiting", "scheduled", "retrying", "dead", "busy": <int>,
                    "processed", "failed": <int> | null},      (all null unless ok)
         "queues": [{"name": <str>, "waiting", "scheduled", "retrying", "dead", "busy": <int>,
                     "latency": <seconds, float>}],
         "processes": [{"identity", "hostname", "pid", "tag", "started_at", "beat",
                        "quiet": <bool>, "busy", "concurrency", "queues": [<str>],
                        "rss_kb", "rtt_us",
                        "running": [{"child", "queue", "worker", "job_id", "run_at"}]}],
         "processes_note": <str> | null,
         "schedules": [{"worker", "cron", "args", "timezone",
                        "next_run", "last_run": <epoch s> | null}]}}}

dead list::

    {"schema": 1, "backends": {<name>: {"status", "error"}},
     "jobs": [{"backend", "queue", "id", "msg_id": <int> | null, "worker", "args",
               "error_class", "error_message", "attempts": <int> | null,
               "died_at": <epoch s>}]}

dead retry / dead delete::

    {"schema": 1, "action": "retry" | "delete", "backends": {...},
     "done": [<dead list job> (+ "new_msg_id": <int> | null for retry)],
     "skipped": [<dead list job> + "reason"], "not_found": [<id>], "ambiguous": [<msg_id>]}

check::

    {"schema": 1, "ok": <bool>, "backends": {<name>: {"status", "error",
     "version": <str> | null, "warnings": [<str>]}}}
"""

import datetime
import functools
import json
import re
import sys
import time

from jobrunner.backends import NAMES
from jobrunner.cli import common as cli


def _admin():
    """The admin logic, imported on use: it loads both drivers, which `jobrunner run`
    (whose parser includes these commands) should not carry into every child."""
    from jobrunner.ops import admin
    return admin


def _lost():
    """A server that goes away in the middle of a command: exit 4 with a message."""
    from jobrunner.backends import connection_errors
    return connection_errors()


#: Dead jobs `dead list` shows unless --limit says otherwise (0: all).
DEFAULT_LIMIT = 100
#: Nesting of a dead job's args that is shown; Python's json cannot print values that nest
#: close to its recursion limit, so deeper args are shown as unreadable instead.
MAX_SHOWN_DEPTH = 100
#: ``error_class`` of a job that cannot be shown as it is stored (docs/operations.md).
UNREADABLE = "jobrunner.Unreadable"
#: Python keeps bytes that were not UTF-8 (and JSON's ``"\ud800"``) as lone surrogates, which
#: no encoding can write.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def add_commands(commands):
    """Add ``stats``, ``dead`` and ``check`` to the CLI's subparsers."""
    stats = commands.add_parser("stats", help="queues, retries, dead jobs and processes")
    _common(stats)
    stats.set_defaults(handler=_guarded(cmd_stats))

    dead = commands.add_parser("dead", help="list, retry or delete dead jobs")
    dead_commands = dead.add_subparsers(dest="dead_command")
    listing = dead_commands.add_parser("list", help="show dead jobs, newest first")
    _common(listing)
    listing.add_argument("--queue", help="only this queue's dead jobs")
    listing.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                         help=f"show at most N jobs (default {DEFAULT_LIMIT}; 0: all)")
    listing.set_defaults(handler=_guarded(cmd_dead_list))
    for action, text in (("retry", "send dead jobs back to their queues with fresh retries"),
                         ("delete", "remove dead jobs for good")):
        sub = dead_commands.add_parser(action, help=text)
        sub.add_argument("ids", nargs="*", metavar="ID",
                         help="job id (pgmq metadata.id or msg_id, Sidekiq jid)")
        sub.add_argument("--all", action="store_true", help="every dead job (of --queue)")
        sub.add_argument("--queue", help="only dead jobs of this queue")
        _common(sub)
        sub.set_defaults(handler=_guarded(cmd_dead_action), action=action)
    dead.set_defaults(handler=lambda args: _usage(dead))

    check = commands.add_parser("check", help="exit 0 when the backends answer (health check)")
    _common(check)
    check.set_defaults(handler=_guarded(cmd_check, cli.EXIT_ERROR))


def _guarded(handler, code=None):
    """``handler`` with a lost connection turned into exit ``code`` (default 4) and a message."""
    @functools.wraps(handler)
    def run(args):
        try:
            return handler(args)
        except _lost() as exc:
            raise cli.CliError(cli.EXIT_UNAVAILABLE if code is None else code,
                               f"lost the connection to a backend: {str(exc).strip()}") from None
    return run


def _common(parser):
    cli.connection_flags(parser)
    parser.add_argument("--backend", choices=NAMES, help="only this backend")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _usage(parser):
    parser.print_help(sys.stderr)
    return cli.EXIT_USAGE


def _session(args):
    return _admin().Session({"pg_dsn": args.pg_dsn, "redis_url": args.redis_url}, only=args.backend)


def _out(text):
    """Print ``text`` with each lone surrogate as JSON's ``\\uXXXX`` escape (valid in JSON
    strings, readable as text): one odd byte in a stored job must not stop the output."""
    print(_LONE_SURROGATE.sub(lambda m: "\\u%04x" % ord(m.group()), text))


def _emit_json(result):
    _out(json.dumps(result, indent=2, ensure_ascii=False, default=str))


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
    """``job`` (a dead list entry) as it can be printed: args nested too deeply for json
    make it unreadable, with the reason and the error it died with."""
    if not _nests_deeper(job.get("args"), MAX_SHOWN_DEPTH):
        return job
    reason = f"args nest more than {MAX_SHOWN_DEPTH} deep; not shown"
    if job.get("error_message"):
        reason += f" (it died with {job.get('error_class')}: {job['error_message']})"
    return dict(job, args=None, error_class=UNREADABLE, error_message=reason)


def _reachability_code(session):
    """EXIT_UNAVAILABLE, with the reasons on stderr, unless every needed backend answered."""
    if session.inspectors and not session.unavailable():
        return cli.EXIT_OK
    for name, status in session.status.items():
        if status["status"] != _admin().OK:
            print(f"jobrunner: {name} {status['status']}: {status['error']}", file=sys.stderr)
    if not session.inspectors:
        print("jobrunner: no backend answered; set --pg-dsn / --redis-url or their environment "
              "variables", file=sys.stderr)
    return cli.EXIT_UNAVAILABLE


# -- stats ----------------------------------------------------------------------------------

def cmd_stats(args):
    with _session(args) as session:
        result = _admin().stats(session)
        code = _reachability_code(session)
    if args.json:
        _emit_json(result)
    else:
        _out(format_stats(result))
    return code


def format_stats(result):
    """The human table for ``jobrunner stats``."""
    rows = [("BACKEND", "QUEUE", "WAITING", "SCHEDULED", "RETRYING", "DEAD", "BUSY", "LATENCY")]
    notes = []
    for name, section in result["backends"].items():
        if section["status"] != _admin().OK:
            notes.append(f"{name}: {section['status']} ({section['error']})")
            continue
        for queue in section["queues"]:
            rows.append((name, queue["name"], *_counts(queue), duration(queue["latency"])))
        # The backend's latency is its slowest queue's: how long the oldest waiting job has waited.
        oldest = max((queue["latency"] for queue in section["queues"]), default=0.0)
        rows.append((name, "(all)", *_counts(section["totals"]), duration(oldest)))
        if section["totals"]["processed"] is not None:
            notes.insert(0, f"{name}: processed {section['totals']['processed']}, "
                            f"failed {section['totals']['failed']} (all time)")
    lines = table(rows, right=range(2, 8)) + notes + [""] + format_processes(result)
    lines += [""] + format_schedules(result)
    return "\n".join(lines).rstrip()


def format_schedules(result):
    rows = [("SCHEDULE", "CRON", "TIMEZONE", "NEXT RUN", "LAST RUN", "ARGS")]
    now = result["generated_at"]
    for name, section in result["backends"].items():
        for entry in section.get("schedules", ()):
            rows.append((f"{name} {entry['worker']}", entry["cron"], entry["timezone"],
                         _in(entry["next_run"], now), _ago(entry["last_run"], now),
                         json.dumps(entry["args"])))
    return table(rows) if len(rows) > 1 else ["SCHEDULE (none)"]


def _in(epoch, now):
    return "?" if epoch is None else "in " + duration(epoch - now)


def _counts(values):
    return [str(values[k]) for k in ("waiting", "scheduled", "retrying", "dead", "busy")]


def format_processes(result):
    rows = [("PROCESS", "BUSY", "QUIET", "BEAT", "STARTED", "QUEUES")]
    notes = []
    now = result["generated_at"]
    for name, section in result["backends"].items():
        if section["processes_note"]:
            notes.append(f"{name}: no processes listed: {section['processes_note']}")
        for proc in section["processes"]:
            rows.append((f"{name} {proc['identity']}",
                         f"{proc['busy']}/{proc['concurrency'] or '?'}",
                         "yes" if proc["quiet"] else "no", _ago(proc["beat"], now),
                         _ago(proc["started_at"], now), ",".join(proc["queues"])))
    return (table(rows) if len(rows) > 1 else ["PROCESS (none)"]) + notes


def _ago(epoch, now):
    return "?" if epoch is None else duration(now - epoch) + " ago"


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


def table(rows, right=()):
    """Rows of strings as aligned columns; columns in ``right`` are right-aligned."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [str(cell).rjust(w) if i in right else str(cell).ljust(w)
                 for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return lines


# -- dead -----------------------------------------------------------------------------------

def cmd_dead_list(args):
    with _session(args) as session:
        result = _admin().dead_list(session, queue=args.queue, limit=max(0, args.limit) or None)
        code = _reachability_code(session)
    result["jobs"] = [showable(job) for job in result["jobs"]]
    if args.json:
        _emit_json(result)
    elif result["jobs"]:
        _out(format_dead(result["jobs"]))
    else:
        print("no dead jobs")
    return code


def format_dead(jobs):
    """The human table for ``jobrunner dead list``: one line per job, long values cut."""
    rows = [("DIED (UTC)", "BACKEND", "QUEUE", "ID", "WORKER", "ATTEMPTS", "ERROR", "ARGS")]
    for job in jobs:
        ident = job["id"] or "-"
        if job["msg_id"] is not None:
            ident = f"{ident} (msg {job['msg_id']})"
        label = "unreadable" if job["error_class"] == UNREADABLE else job["error_class"]
        error = ": ".join(str(p) for p in (label, job["error_message"]) if p)
        rows.append((_utc(job["died_at"]), job["backend"], job["queue"] or "-", ident,
                     job["worker"] or "-", str(job["attempts"] or "-"), _cut(error, 60),
                     _cut(json.dumps(job["args"], ensure_ascii=False), 60)))
    return "\n".join(table(rows, right={5}))


def _utc(epoch):
    try:
        moment = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):     # a stored time no calendar has
        return "?"
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _cut(text, limit):
    text = " ".join(str(text).split())      # one line, whatever the message held
    return text if len(text) <= limit else text[:limit - 1] + "…"


def cmd_dead_action(args):
    if bool(args.ids) == bool(args.all):
        print(f"jobrunner: dead {args.action}: give job ids or --all, not both or neither",
              file=sys.stderr)
        return cli.EXIT_USAGE
    with _session(args) as session:
        result = _admin().dead_action(session, args.action, ids=None if args.all else args.ids,
                                   queue=args.queue)
        code = _reachability_code(session)
    for key in ("done", "skipped"):
        result[key] = [showable(job) for job in result[key]]
    if args.json:
        _emit_json(result)
    else:
        _out(format_action(result))
    if code == cli.EXIT_OK and (result["not_found"] or result["ambiguous"]):
        code = cli.EXIT_NOT_FOUND
    return code


def format_action(result):
    verb = "retried" if result["action"] == "retry" else "deleted"
    lines = []
    for job in result["done"]:
        where = f"{job['backend']} {job['queue']} {job['id'] or '-'}"
        if job.get("new_msg_id") is not None:
            where += f" (msg {job['msg_id']} -> {job['new_msg_id']})"
        lines.append(f"{verb} {where}")
    lines += [f"skipped {j['backend']} {_cut(json.dumps(j['args']), 40)}: {j['reason']}"
              for j in result["skipped"]]
    lines += [f"not found: {i}" for i in result["not_found"]]
    lines += [f"ambiguous: msg_id {i} is dead in several queues; pass --queue"
              for i in result["ambiguous"]]
    lines.append(f"{len(result['done'])} dead job(s) {verb}")
    return "\n".join(lines)


# -- check ----------------------------------------------------------------------------------

def cmd_check(args):
    started = time.monotonic()
    with _session(args) as session:
        result = _admin().check(session)
    if args.json:
        _emit_json(result)
    else:
        for name, section in result["backends"].items():
            detail = section["version"] or section["error"]
            print(f"{name}: {section['status']}" + (f" ({detail})" if detail else ""))
            for warning in section["warnings"]:
                print(f"{name}: warning: {warning}")
        print(f"{'healthy' if result['ok'] else 'unhealthy'} "
              f"({time.monotonic() - started:.2f}s)")
    if result["ok"]:
        return cli.EXIT_OK
    reasons = [f"{n}: {s['error']}" for n, s in result["backends"].items()
               if s["status"] == _admin().UNAVAILABLE] or ["no backend answered"]
    print("jobrunner: unhealthy: " + "; ".join(reasons), file=sys.stderr)
    return cli.EXIT_ERROR

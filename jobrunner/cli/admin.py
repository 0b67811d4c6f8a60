"""The overview commands of the `jobrunner` CLI: stats and check.

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
                     "latency": <seconds, float>, "paused": <bool>}],
         "processes": [<a process of `jobrunner busy --json`, without "backend">],
         "processes_note": <str> | null,
         "schedules": [{"worker", "cron", "args", "timezone",
                        "next_run", "last_run": <epoch s> | null}]}}}

check::

    {"schema": 1, "ok": <bool>, "backends": {<name>: {"status", "error",
     "version": <str> | null, "warnings": [<str>]}}}
"""

import json
import sys
import time

from jobrunner.cli import common as cli
from jobrunner.cli.output import ago, duration, emit_json, table, until


def add_commands(commands):
    """Add ``stats`` and ``check`` to the CLI's subparsers."""
    stats = commands.add_parser("stats", help="queues, retries, dead jobs and processes")
    cli.operator_flags(stats)
    stats.set_defaults(handler=cli.guarded(cmd_stats))
    check = commands.add_parser("check", help="exit 0 when the backends answer (health check)")
    cli.operator_flags(check)
    check.set_defaults(handler=cli.guarded(cmd_check, cli.EXIT_ERROR))


# -- stats ----------------------------------------------------------------------------------

def cmd_stats(args):
    return cli.report(args, cli.admin().stats, format_stats)


def format_stats(result):
    """The human table for ``jobrunner stats``."""
    rows = [("BACKEND", "QUEUE", "WAITING", "SCHEDULED", "RETRYING", "DEAD", "BUSY", "LATENCY")]
    notes = []
    for name, section in result["backends"].items():
        if section["status"] != cli.admin().OK:
            notes.append(f"{name}: {section['status']} ({section['error']})")
            continue
        for queue in section["queues"]:
            label = queue["name"] + (" (paused)" if queue.get("paused") else "")
            rows.append((name, label, *_counts(queue), duration(queue["latency"])))
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
                         until(entry["next_run"], now), ago(entry["last_run"], now),
                         json.dumps(entry["args"])))
    return table(rows) if len(rows) > 1 else ["SCHEDULE (none)"]


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
                         "yes" if proc["quiet"] else "no", ago(proc["beat"], now),
                         ago(proc["started_at"], now), ",".join(proc["queues"])))
    return (table(rows) if len(rows) > 1 else ["PROCESS (none)"]) + notes


# -- check ----------------------------------------------------------------------------------

def cmd_check(args):
    started = time.monotonic()
    with cli.session(args) as session:
        result = cli.admin().check(session)
    if args.json:
        emit_json(result)
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
               if s["status"] == cli.admin().UNAVAILABLE] or ["no backend answered"]
    print("jobrunner: unhealthy: " + "; ".join(reasons), file=sys.stderr)
    return cli.EXIT_ERROR

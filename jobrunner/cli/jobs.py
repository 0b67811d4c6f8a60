"""The job commands of the `jobrunner` CLI: retries, scheduled, dead, job ID, busy.

The logic lives in ``jobrunner/ops/jobs.py``; this module parses flags and prints. With
``--json`` each prints one JSON object (``"schema": 1``), documented in full in
``docs/operations.md``:

retries list / scheduled list / dead list::

    {"schema": 1, "kind": "retrying" | "scheduled" | "dead", "backends": {<name>: {...}},
     "jobs": [<job entry>]}

    a job entry: {"backend", "state", "queue", "id", "msg_id": <int> | null, "worker",
                  "args", "error_class", "error_message", "attempts": <int>,
                  "failed_at", "run_at", "died_at": <epoch s> | null}

retries retry|delete|kill, scheduled enqueue-now|delete, dead retry|delete::

    {"schema": 1, "kind", "action": <the command's verb>, "backends": {...},
     "done": [<job entry> (+ "new_msg_id": <int> | null for dead retry)],
     "skipped": [<job entry> + "reason"], "not_found": [<id>], "ambiguous": [<msg_id>]}

job ID::

    {"schema": 1, "id": <str>, "backends": {...},
     "found": [<job entry> + "enqueued_at", "backtrace": [<line>], "process": <identity>]}

busy::

    {"schema": 1, "generated_at": <epoch s>, "backends": {...},
     "processes": [{"backend", "identity", "hostname", "pid", "tag", "started_at", "beat",
                    "quiet", "busy", "concurrency", "queues", "rss_kb", "rtt_us",
                    "running": [{"child", "queue", "worker", "job_id", "args", "run_at"}]}]}
"""

import json
import sys
import time

from jobrunner.cli import common as cli
from jobrunner.cli.output import (ago, args_text, cut, duration, emit_json, error_text,
                                  job_ident, out, showable, table, until, utc)

#: Jobs a list shows unless --limit says otherwise (0: all).
DEFAULT_LIMIT = 100

#: command -> (the kind it lists, {verb: (the backend action, help)}).
COMMANDS = {
    "retries": ("retrying", "list, retry now, delete or kill jobs waiting to be retried", {
        "retry": ("run", "run them now, as their next attempt"),
        "delete": ("delete", "remove them for good"),
        "kill": ("kill", "move them to dead now, keeping their error")}),
    "scheduled": ("scheduled", "list, enqueue now or delete jobs enqueued to run later", {
        "enqueue-now": ("run", "put them in their queue now"),
        "delete": ("delete", "remove them for good")}),
    "dead": ("dead", "list, retry or delete dead jobs", {
        "retry": ("run", "send them back to their queues with fresh retries"),
        "delete": ("delete", "remove them for good")}),
}
_PAST = {"retry": "retried", "enqueue-now": "enqueued", "delete": "deleted", "kill": "killed"}


def _ops():
    from jobrunner.ops import jobs
    return jobs


def add_commands(commands):
    """Add ``retries``, ``scheduled``, ``dead``, ``job`` and ``busy`` to the subparsers."""
    for name, (kind, text, verbs) in COMMANDS.items():
        parser = commands.add_parser(name, help=text)
        sub = parser.add_subparsers(dest=f"{name}_command")
        _add_list(sub, kind)
        for verb, (action, verb_help) in verbs.items():
            _add_action(sub, kind, verb, action, verb_help)
        parser.set_defaults(handler=lambda args, parser=parser: cli.usage(parser))
    job = commands.add_parser("job", help="where one job is, its attempts, args and last error")
    job.add_argument("job_id", metavar="ID", help="job id (pgmq metadata.id or msg_id, "
                                                  "Sidekiq jid)")
    cli.operator_flags(job)
    job.set_defaults(handler=cli.guarded(cmd_job))
    busy = commands.add_parser("busy", help="every supervisor and the jobs running now")
    cli.operator_flags(busy)
    busy.set_defaults(handler=cli.guarded(cmd_busy))


def _add_list(sub, kind):
    listing = sub.add_parser("list", help="show them, " + (
        "newest first" if kind == "dead" else "soonest due first"))
    cli.operator_flags(listing)
    listing.add_argument("--queue", help="only this queue's jobs")
    listing.add_argument("--worker", help="only this worker's jobs")
    listing.add_argument("--error", help="only jobs whose error contains this text")
    listing.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                         help=f"show at most N jobs (default {DEFAULT_LIMIT}; 0: all)")
    listing.set_defaults(handler=cli.guarded(cmd_list), kind=kind)


def _add_action(sub, kind, verb, action, text):
    parser = sub.add_parser(verb, help=text)
    parser.add_argument("ids", nargs="*", metavar="ID",
                        help="job id (pgmq metadata.id or msg_id, Sidekiq jid)")
    parser.add_argument("--all", action="store_true", help="every such job (of --queue)")
    parser.add_argument("--queue", help="only jobs of this queue")
    cli.operator_flags(parser)
    parser.set_defaults(handler=cli.guarded(cmd_action), kind=kind, verb=verb, action=action)


# -- lists ----------------------------------------------------------------------------------

def cmd_list(args):
    with cli.session(args) as session:
        result = _ops().job_list(session, args.kind, queue=args.queue, worker=args.worker,
                                 error=args.error, limit=max(0, args.limit) or None)
        code = cli.reachability_code(session)
    result["jobs"] = [showable(job) for job in result["jobs"]]
    if args.json:
        emit_json(result)
    elif result["jobs"]:
        out(format_list(args.kind, result["jobs"]))
    else:
        print(f"no {args.kind} jobs")
    return code


def format_list(kind, jobs, now=None):
    """The human table of a list: one line per job, long values cut."""
    now = time.time() if now is None else now
    if kind == "dead":
        rows = [("DIED (UTC)", "BACKEND", "QUEUE", "ID", "WORKER", "ATTEMPTS", "ERROR", "ARGS")]
        for job in jobs:
            rows.append((utc(job["died_at"]), *_columns(job), cut(error_text(job), 60),
                         args_text(job["args"])))
        return "\n".join(table(rows, right={5}))
    if kind == "retrying":
        rows = [("NEXT RUN", "BACKEND", "QUEUE", "ID", "WORKER", "ATTEMPTS", "FAILED (UTC)",
                 "ERROR", "ARGS")]
        for job in jobs:
            rows.append((until(job["run_at"], now), *_columns(job), utc(job["failed_at"]),
                         cut(error_text(job), 60), args_text(job["args"])))
        return "\n".join(table(rows, right={5}))
    rows = [("RUNS (UTC)", "IN", "BACKEND", "QUEUE", "ID", "WORKER", "ARGS")]
    for job in jobs:
        rows.append((utc(job["run_at"]), until(job["run_at"], now).replace("in ", ""),
                     *_columns(job)[:4], args_text(job["args"])))
    return "\n".join(table(rows))


def _columns(job):
    return (job["backend"], job["queue"] or "-", job_ident(job), job["worker"] or "-",
            str(job["attempts"] if job["attempts"] is not None else "-"))


# -- actions --------------------------------------------------------------------------------

def cmd_action(args):
    name = {"retrying": "retries"}.get(args.kind, args.kind)
    if bool(args.ids) == bool(args.all):
        print(f"jobrunner: {name} {args.verb}: give job ids or --all, not both or neither",
              file=sys.stderr)
        return cli.EXIT_USAGE
    with cli.session(args) as session:
        result = _ops().job_action(session, args.kind, args.action,
                                   ids=None if args.all else args.ids, queue=args.queue)
        code = cli.reachability_code(session)
    result["action"] = args.verb
    for key in ("done", "skipped"):
        result[key] = [showable(job) for job in result[key]]
    if args.json:
        emit_json(result)
    else:
        out(format_action(result, _PAST[args.verb]))
    if code == cli.EXIT_OK and (result["not_found"] or result["ambiguous"]):
        code = cli.EXIT_NOT_FOUND
    return code


def format_action(result, verb):
    lines = []
    for job in result["done"]:
        where = f"{job['backend']} {job['queue']} {job['id'] or '-'}"
        if job.get("new_msg_id") is not None:
            where += f" (msg {job['msg_id']} -> {job['new_msg_id']})"
        lines.append(f"{verb} {where}")
    lines += [f"skipped {j['backend']} {cut(json.dumps(j['args']), 40)}: {j['reason']}"
              for j in result["skipped"]]
    lines += [f"not found: {i}" for i in result["not_found"]]
    lines += [f"ambiguous: msg_id {i} is in several queues; pass --queue"
              for i in result["ambiguous"]]
    lines.append(f"{len(result['done'])} {result['kind']} job(s) {verb}")
    return "\n".join(lines)


# -- one job --------------------------------------------------------------------------------

def cmd_job(args):
    with cli.session(args) as session:
        result = _ops().find_job(session, args.job_id)
        code = cli.reachability_code(session)
    result["found"] = [showable(job) for job in result["found"]]
    if args.json:
        emit_json(result)
    elif result["found"]:
        out("\n\n".join(format_job(job) for job in result["found"]))
    else:
        print(f"jobrunner: no job {args.job_id} on "
              + (", ".join(session.inspectors) or "any backend"), file=sys.stderr)
    if code == cli.EXIT_OK and not result["found"]:
        code = cli.EXIT_NOT_FOUND
    return code


def format_job(job, now=None):
    """One job, a field a line, and its last error's traceback."""
    now = time.time() if now is None else now
    state = job["state"]
    if job["run_at"] is not None:
        state += f" (runs {until(job['run_at'], now)}, {utc(job['run_at'])} UTC)"
    if job["died_at"] is not None:
        state += f" (died {utc(job['died_at'])} UTC)"
    fields = [("state", state), ("worker", job["worker"] or "-"),
              ("queue", job["queue"] or "-"), ("attempts", f"{job['attempts']} failed"),
              ("enqueued", f"{utc(job.get('enqueued_at'))} UTC"),
              ("args", json.dumps(job["args"], ensure_ascii=False))]
    if job.get("process"):
        fields.append(("process", job["process"]))
    if job["error_class"] or job["error_message"]:
        fields.append(("error", f"{error_text(job)} (at {utc(job['failed_at'])} UTC)"))
    lines = [f"{job['backend']} job {job_ident(job)}"]
    lines += [f"  {name + ':':<10} {value}" for name, value in fields]
    if job.get("backtrace"):
        lines.append("  backtrace:")
        lines += ["    " + line for line in job["backtrace"]]
    return "\n".join(lines)


# -- busy -----------------------------------------------------------------------------------

def cmd_busy(args):
    return cli.report(args, _ops().busy, format_busy)


def format_busy(result):
    """Two tables: the supervisors, then every job running now."""
    now = result["generated_at"]
    procs = [("BACKEND", "PROCESS", "HOST", "PID", "STARTED", "BEAT", "BUSY", "QUIET",
              "QUEUES")]
    jobs = [("BACKEND", "PROCESS", "WORKER", "ID", "QUEUE", "RUNTIME", "ARGS")]
    for proc in result["processes"]:
        procs.append((proc["backend"], proc["identity"], proc["hostname"] or "?",
                      str(proc["pid"]), ago(proc["started_at"], now), ago(proc["beat"], now),
                      f"{proc['busy']}/{proc['concurrency'] or '?'}",
                      "yes" if proc["quiet"] else "no", ",".join(proc["queues"])))
        for run in proc["running"]:
            runtime = "?" if run["run_at"] is None else duration(now - run["run_at"])
            jobs.append((proc["backend"], proc["identity"], run["worker"] or "-",
                         run["job_id"] or "-", run["queue"] or "-", runtime,
                         args_text(run.get("args"))))
    lines = table(procs) if len(procs) > 1 else ["no supervisor is running"]
    if len(jobs) > 1:
        lines += [""] + table(jobs)
    elif len(procs) > 1:
        lines += ["", "no job is running"]
    return "\n".join(lines)

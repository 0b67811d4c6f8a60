"""The job commands' logic: list, move and find jobs, and what runs now, over every backend.

Each function takes an ``ops.admin.Session`` and returns the dict its command prints with
``--json`` (``docs/operations.md``). The kinds and actions are the backend interface's
(``backends/inspector.py``: ``KINDS``, ``ACTIONS``); an id is a job id or a backend's own
message id (a pgmq msg_id).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from jobrunner.ops.admin import SCHEMA, Session


def _order(kind: str):
    """How entries of ``kind`` from several backends are merged: as each backend sorts."""
    if kind == "dead":
        return (lambda job: job["died_at"] or 0.0), True
    return (lambda job: job["run_at"] or 0.0), False


def job_list(session: Session, kind: str, queue: str | None = None, worker: str | None = None,
             error: str | None = None, limit: int | None = None,
             offset: int = 0) -> dict[str, Any]:
    """``jobrunner retries|scheduled|dead list --json``: jobs of ``kind`` on every selected
    backend, dead ones newest first, the others soonest due first."""
    jobs = []
    for inspector in session.inspectors.values():
        # Each backend gives its first offset + limit; the page is cut from the merge.
        jobs += inspector.jobs(kind, queue=queue, worker=worker, error=error,
                               limit=(offset + limit) if limit else None)
    key, newest_first = _order(kind)
    jobs.sort(key=key, reverse=newest_first)
    jobs = jobs[offset:]
    return {"schema": SCHEMA, "kind": kind, "jobs": jobs[:limit] if limit else jobs,
            "backends": dict(session.status)}


def job_action(session: Session, kind: str, action: str, ids: Sequence[str] | None = None,
               queue: str | None = None) -> dict[str, Any]:
    """``jobrunner retries|scheduled|dead ACTION``: ``action`` ("run", "delete", "kill") on
    the jobs of ``kind`` named by ``ids`` (None: all, of ``queue`` when given)."""
    done, skipped, ambiguous = [], [], []
    for inspector in session.inspectors.values():
        result = inspector.job_action(kind, action, ids=ids, queue=queue)
        done += result[0]
        skipped += result[1]
        ambiguous += result[2]
    matched = {str(e["id"]) for e in done + skipped} | \
              {str(e["msg_id"]) for e in done + skipped if e["msg_id"] is not None}
    not_found = [] if ids is None else \
        [i for i in dict.fromkeys(ids) if i not in matched and i not in ambiguous]
    return {"schema": SCHEMA, "kind": kind, "action": action, "done": done,
            "skipped": skipped, "not_found": not_found, "ambiguous": ambiguous,
            "backends": dict(session.status)}


def dead_action(session: Session, action: str, ids: Sequence[str] | None = None,
                queue: str | None = None) -> dict[str, Any]:
    """``jobrunner dead retry|delete``: ``job_action`` on dead jobs, "retry" being "run"."""
    result = job_action(session, "dead", "run" if action == "retry" else action, ids, queue)
    return dict(result, action=action)


def find_job(session: Session, job_id: str) -> dict[str, Any]:
    """``jobrunner job ID --json``: every place a job with that id is, on every backend."""
    found = []
    for inspector in session.inspectors.values():
        found += inspector.find_job(job_id)
    return {"schema": SCHEMA, "id": job_id, "found": found, "backends": dict(session.status)}


def busy(session: Session) -> dict[str, Any]:
    """``jobrunner busy --json``: every live supervisor and the jobs it runs now."""
    processes = []
    for name, inspector in session.inspectors.items():
        processes += [dict(process, backend=name) for process in inspector.processes()]
    processes.sort(key=lambda p: (p["backend"], p["hostname"] or "", p["started_at"] or 0.0))
    return {"schema": SCHEMA, "generated_at": time.time(), "processes": processes,
            "backends": dict(session.status)}

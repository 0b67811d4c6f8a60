"""The memory backend's job body: ``{"id", "worker_name", "args"}`` as JSON text, in and out.

A body is kept as the text the producer wrote, so a job's args are decoded afresh at every
delivery (a job that changes its args changes nothing stored) and a body that is not a job can
be stored too, as on a real server: it comes back as a ``Job`` with ``problem`` set.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from jobrunner.job import TRACE_FIELD, Job, trace_context_of
from jobrunner.backends.memory.store import Message


def bodies(worker_name: str, encoded_args: Sequence[str], job_ids: Sequence[str],
           carrier: Mapping[str, str] | None = None) -> list[str]:
    """The bodies of jobs whose args are already compact JSON text (and ``carrier``, the trace
    context they carry, if any)."""
    name = json.dumps(worker_name, ensure_ascii=False)
    traced = f',"{TRACE_FIELD}":{json.dumps(dict(carrier))}' if carrier else ""
    return [f'{{"id":{json.dumps(job_id)},"worker_name":{name}{traced},"args":{args}}}'
            for job_id, args in zip(job_ids, encoded_args)]


def decode(body: str) -> tuple[dict | None, str | None]:
    """``(item, None)`` for a body that is a JSON object, else ``(None, why not)``."""
    try:
        item = json.loads(body)
    except (TypeError, ValueError) as exc:
        return None, f"invalid JSON: {exc}"
    except RecursionError:
        return None, "invalid JSON: nested too deeply to decode"
    if not isinstance(item, dict):
        return None, f"payload is JSON {type(item).__name__}, not an object"
    return item, None


def job_of(message: Message) -> Job:
    """The ``Job`` for the current delivery of ``message``; bad bodies get ``problem`` set."""
    base: dict[str, Any] = {
        "queue": message.queue, "attempt": message.failures + 1,
        "enqueued_at": message.enqueued_at, "receipt": (message.msg_id, message.lease)}
    item, problem = decode(message.body)
    if item is None:
        return Job(problem=problem, **base)
    job_id = item.get("id") if isinstance(item.get("id"), str) else None
    name = item.get("worker_name")
    if not isinstance(name, str) or not name:
        return Job(id=job_id, problem="payload has no `worker_name` string", **base)
    if "args" not in item:
        return Job(id=job_id, worker_name=name, problem="payload has no `args`", **base)
    return Job(id=job_id, worker_name=name, args=item["args"],
               trace_context=trace_context_of(item.get(TRACE_FIELD)), **base)

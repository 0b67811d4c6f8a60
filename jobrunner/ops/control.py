"""The control commands' logic: pause, resume or purge a queue; quiet or stop a supervisor."""

from __future__ import annotations

from typing import Any

from jobrunner.ops.admin import SCHEMA, Session


def _knows_queue(inspector, queue: str) -> bool:
    rows = inspector.stats()["queues"]
    return any(row["name"] == queue for row in rows) or queue in inspector.paused_queues()


def queue_action(session: Session, action: str, queue: str,
                 anywhere: bool = False) -> dict[str, Any]:
    """``jobrunner queue pause|resume|purge QUEUE --json``: ``action`` on each selected
    backend that has the queue (any job ever sent to it, or paused), or on every selected
    backend when ``anywhere`` (``--backend`` names one: pausing a queue before its first
    job is allowed). ``results`` is empty when no backend has it."""
    results = []
    for name, inspector in session.inspectors.items():
        if anywhere or _knows_queue(inspector, queue):
            results.append(dict(inspector.queue_action(action, queue), backend=name))
    return {"schema": SCHEMA, "action": action, "queue": queue, "results": results,
            "backends": dict(session.status)}


def signal(session: Session, action: str, identity: str) -> dict[str, Any]:
    """``jobrunner quiet|stop IDENTITY --json``: ask that supervisor, wherever it is listed,
    to go quiet or stop; ``sent_to`` names the backends that had it."""
    sent_to = [name for name, inspector in session.inspectors.items()
               if inspector.signal(identity, action)]
    return {"schema": SCHEMA, "action": action, "identity": identity, "sent_to": sent_to,
            "backends": dict(session.status)}

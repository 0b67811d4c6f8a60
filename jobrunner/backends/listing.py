"""The filters of ``Inspector.jobs``, for backends that filter job entries in Python."""

from __future__ import annotations

from typing import Collection


def matches(entry: dict, queue: str | None = None, ids: Collection[str] | None = None,
            worker: str | None = None, error: str | None = None) -> bool:
    """Whether a job entry passes the filters: its queue, its id or msg_id among ``ids``,
    its worker, and ``error`` found (ignoring case) in its error class or message."""
    if queue is not None and entry["queue"] != queue:
        return False
    if ids is not None and entry["id"] not in ids and \
            (entry["msg_id"] is None or str(entry["msg_id"]) not in ids):
        return False
    if worker is not None and entry["worker"] != worker:
        return False
    if error is not None:
        needle = error.lower()
        return any(needle in str(entry[key] or "").lower()
                   for key in ("error_class", "error_message"))
    return True

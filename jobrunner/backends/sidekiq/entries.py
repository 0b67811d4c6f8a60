"""Job entries in the shape ``base.Inspector`` gives them, read from Sidekiq job hashes."""

from jobrunner.backends.sidekiq.payload import excerpt, load_item, read_time

#: ``error_class`` of an entry that is not even a JSON object (docs/operations.md).
UNREADABLE = "jobrunner.Unreadable"


def queue_of_item(item):
    queue = item.get("queue") if item else None
    return queue if isinstance(queue, str) and queue else None


def worker_name(item):
    """The name Sidekiq's UI shows: ``display_class``, then ActiveJob's ``wrapped``, ``class``."""
    for key in ("display_class", "wrapped", "class"):
        if isinstance(item.get(key), str) and item[key]:
            return item[key]
    return None


def jid_of(item):
    """The job id as ``payload.parse`` reads it (a number is taken as its text)."""
    jid = item.get("jid") if item else None
    if isinstance(jid, bool) or not isinstance(jid, (str, int)):
        return None
    return str(jid)


def failed_runs(item):
    """Runs that failed so far: Sidekiq's ``retry_count`` is 0 after the first; none without
    one (a job that never failed, or one an operator killed before it ran)."""
    count = item.get("retry_count")
    if isinstance(count, bool) or not isinstance(count, int):
        return 0
    # The Web UI's "retry now" subtracts 1, so a count of -1 is possible.
    return max(0, count + 1)


def job_entry(state, raw, score=None):
    """The entry for the raw job JSON ``raw`` found in ``state``; ``score`` is its sorted
    set's (when it is due for scheduled and retrying jobs, when it died for dead ones)."""
    due = float(score) if score is not None and state in ("scheduled", "retrying") else None
    died = float(score) if score is not None and state == "dead" else None
    item, problem = load_item(raw)
    if item is None:
        # Not a job hash (Sidekiq keeps invalid JSON raw): say why, and show the start of the
        # text, its bytes that are not UTF-8 escaped.
        return {"backend": "sidekiq", "state": state, "queue": None, "id": None,
                "msg_id": None, "worker": None, "args": [excerpt(raw)],
                "error_class": UNREADABLE, "error_message": problem, "attempts": None,
                "failed_at": None, "run_at": due, "died_at": died}
    retried_at = read_time(item.get("retried_at"))
    return {"backend": "sidekiq", "state": state, "queue": queue_of_item(item),
            "id": jid_of(item), "msg_id": None, "worker": worker_name(item),
            "args": item.get("args"), "error_class": item.get("error_class"),
            "error_message": item.get("error_message"), "attempts": failed_runs(item),
            "failed_at": retried_at if retried_at is not None
            else read_time(item.get("failed_at")),
            "run_at": due, "died_at": died}

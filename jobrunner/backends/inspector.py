"""The Inspector interface: what operators see and do on one backend, and the names it uses.

``jobrunner stats|jobs|dead|check``, the dashboard and the metrics reader call only these
methods; each backend implements them on a connection of its own (``Backend.inspector``).
"""

from __future__ import annotations

from typing import Any, Sequence

from jobrunner.job import encode_args
from jobrunner.schedule import StoredWorker


#: The sets of jobs ``Inspector.jobs`` lists: jobs that wait outside their queue.
KINDS = ("scheduled", "retrying", "dead")
#: What ``Inspector.job_action`` may do to a job of each kind.
ACTIONS = {"scheduled": ("run", "delete", "kill"), "retrying": ("run", "delete", "kill"),
           "dead": ("run", "delete")}
#: Where ``Inspector.find_job`` may find a job.
STATES = ("waiting", "scheduled", "retrying", "running", "dead", "done")
#: ``error_class`` of a job an operator moved to dead that had not failed.
KILLED = "jobrunner.Killed"
KILLED_MESSAGE = "moved to dead by an operator"
#: What ``Inspector.queue_action`` does.
QUEUE_ACTIONS = ("pause", "resume", "purge")
#: What ``Inspector.signal`` asks of a supervisor, and the signal each stands for.
PROCESS_SIGNALS = {"quiet": "TSTP", "stop": "TERM"}


class Inspector:
    """Read-only views and operator actions on one backend, over one connection.

    The shapes of the results are those of ``jobrunner stats|dead|check --json``
    (``docs/operations.md``); times are epoch seconds.

    A job entry (``jobs``, ``find_job``) is a dict with: backend, state (one of ``STATES``),
    queue, id (the job id, None when unreadable), msg_id (the backend's own number, pgmq and
    memory; None on Redis), worker, args (as stored on the wire), error_class and
    error_message (of the last failure, or None), attempts (failed runs so far; 0 for a job
    that never failed), failed_at (the last failure, or None), run_at (when a scheduled or
    retrying job is due; None otherwise) and died_at (dead jobs only; None otherwise).
    """

    def stats(self) -> dict:
        """``{"totals": {...}, "queues": [{...}], "processes": [...], "processes_note": str}``
        with totals waiting, scheduled, retrying, dead, busy, processed and failed (None where
        the backend keeps no such number). Each queue row also says ``paused`` (bool); the
        processes are those of ``processes``."""
        raise NotImplementedError

    def depths(self, queues: Sequence[str]) -> dict:
        """For the metrics endpoint, one quick read: ``{"queues": {name: {"waiting",
        "latency"}}, "totals": {"scheduled", "retrying", "dead"}}``.

        ``queues`` names the rows (a queue never used has waiting 0); the totals cover every
        queue of the backend, as those of ``stats`` do."""
        raise NotImplementedError

    def schedules(self) -> list[dict]:
        """Stored periodic schedules: key, worker, cron, args, timezone, queue (None when the
        supervisor that stored it did not say), and next_run and last_run as aware datetimes
        (last_run None before the first tick)."""
        raise NotImplementedError

    def run_schedule(self, key: str) -> str | None:
        """Send the job of the stored schedule ``key`` now, with its stored worker name, args
        and queue, outside its ticks (the next tick still fires); the new job's id, or None
        when no such schedule is stored or it names no queue."""
        described = self.stored_schedule(key)
        worker = StoredWorker.of(described) if described else None
        if described is None or worker is None:
            return None
        return self.send_now(worker, encode_args(worker.name, described.get("args")))

    def stored_schedule(self, key: str) -> dict | None:
        """What the backend stores of schedule ``key`` (``Schedule.describe()``), or None."""
        raise NotImplementedError

    def send_now(self, worker: Any, encoded_args: str) -> str:
        """Enqueue one job of ``worker`` (a ``StoredWorker``) on this inspector's connection,
        committed; its id."""
        raise NotImplementedError

    def jobs(self, kind: str, queue: str | None = None, ids: Sequence[str] | None = None,
             worker: str | None = None, error: str | None = None, limit: int | None = None,
             offset: int = 0) -> list[dict]:
        """Job entries of ``kind`` (one of ``KINDS``): dead ones newest first, scheduled and
        retrying ones soonest due first (msg_id, then id, break ties).

        Filters, all optional: ``queue``; ``ids``, job ids or msg_ids (None: all, an empty
        list: none); ``worker``, an exact worker name; ``error``, text found (ignoring case)
        in error_class or error_message. Then ``offset`` entries are skipped and at most
        ``limit`` returned (None: no limit)."""
        raise NotImplementedError

    def job_action(self, kind: str, action: str, ids: Sequence[str] | None = None,
                   queue: str | None = None) -> tuple[list[dict], list[dict], list[str]]:
        """``action`` (one of ``ACTIONS[kind]``) on the jobs of ``kind`` that ``ids`` names
        (None: all of them, of ``queue`` when given). Returns (done, skipped, ambiguous ids):
        entries as ``jobs`` gives them; a skipped one has a ``reason``; a msg_id that names
        jobs in several queues is ambiguous unless ``queue`` is given.

        run     into its queue now, same job id. A dead job gets its retries again (attempts
                from 0); a scheduled or retrying one keeps its attempts. A done entry of a
                dead job on pgmq also has ``new_msg_id``. A body that is not a job is skipped.
        delete  removed for good.
        kill    moved to dead now, keeping its last error; one that never failed gets
                ``KILLED`` with ``KILLED_MESSAGE``.
        Each job is moved in one step, so two operators acting at once move it once."""
        raise NotImplementedError

    def dead_jobs(self, queue: str | None = None, ids: Sequence[str] | None = None,
                  limit: int | None = None) -> list[dict]:
        """``jobs("dead", ...)``: what ``jobrunner dead list`` shows."""
        return self.jobs("dead", queue=queue, ids=ids, limit=limit)

    def dead_action(self, action: str, ids: Sequence[str] | None = None,
                    queue: str | None = None) -> tuple[list[dict], list[dict], list[str]]:
        """``jobrunner dead retry|delete``: ``job_action`` on dead jobs, "retry" being "run"."""
        return self.job_action("dead", "run" if action == "retry" else action, ids=ids,
                               queue=queue)

    def find_job(self, job_id: str) -> list[dict]:
        """Every entry for ``job_id`` (a job id, or a msg_id where the backend has them):
        the job entry fields with ``state`` where it was found, plus ``enqueued_at`` (or
        None), ``backtrace`` (the stored lines of its last error; [] when none) and
        ``process`` (the identity of the supervisor running it, for state "running"; else
        None). Empty when no such job is known. "done" is only known where a backend keeps
        succeeded jobs (pgmq with ``success_action = "archive"``)."""
        raise NotImplementedError

    def processes(self) -> list[dict]:
        """The live supervisors on this backend, those of ``stats``: identity, hostname, pid,
        tag, started_at, beat, quiet, busy, concurrency, queues, rss_kb, rtt_us, and
        ``running``: ``[{"child", "queue", "worker", "job_id", "args", "run_at"}]``.
        A supervisor that stopped beating drops out within a minute."""
        raise NotImplementedError

    def signal(self, identity: str, action: str) -> bool:
        """Ask the supervisor ``identity`` to go quiet or stop (``PROCESS_SIGNALS``); its
        housekeeper sees it at its next tick. False when no live supervisor has that
        identity."""
        raise NotImplementedError

    def queue_action(self, action: str, queue: str) -> dict:
        """``action`` (one of ``QUEUE_ACTIONS``) on ``queue``: pause (no child on any host
        starts its jobs, within ``PAUSE_CHECK_SECONDS``; jobs wait and can still be
        enqueued), resume, or purge (delete the jobs waiting in it now; scheduled, retrying,
        running and dead jobs stay). Returns ``{"queue", "action", "paused": bool,
        "purged": int or None}``."""
        raise NotImplementedError

    def paused_queues(self) -> list[str]:
        """The queues paused now, sorted."""
        raise NotImplementedError

    def history(self, minutes: int = 60) -> list[dict]:
        """Jobs settled per minute over the last ``minutes`` minutes, oldest first, one entry
        per minute (zeros where nothing ran): ``{"minute": <epoch s of the minute's start>,
        "processed": int, "failed": int}``; ``processed`` counts every settled run, failed
        ones included, as Sidekiq's ``stat:processed`` does, and a run whose child died under
        it; a payload that cannot run is not counted. Kept for at least a day (25 h), at a
        cost that does not grow per job: the supervisor counts its children's reports, and
        each housekeeper writes its supervisor's counts (``SupervisorSnapshot.settled``) at
        most once a tick. The current minute is the last entry, and may still grow; minutes
        are those of the supervisors' clocks. A backend that keeps no history returns []."""
        return []

    def health(self) -> dict:
        """``{"version": str or None, "warnings": [str]}`` of the server."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the connection."""

"""The log line of each job's outcome: what ran, how long, and why a failed run failed."""

from __future__ import annotations

import logging

from jobrunner.job import ErrorInfo, Job, Outcome
from jobrunner.log import hold_line

log = logging.getLogger("jobrunner.child")

#: Outcomes that are failures, and the level they are logged at: a retry is a warning, a job
#: that will not run again is an error.
_FAILURE_LEVELS = {Outcome.RETRY: logging.WARNING, Outcome.DEAD: logging.ERROR,
                   Outcome.DISCARDED: logging.ERROR}


def log_outcome(job: Job, outcome: Outcome | None, duration: float,
                error: ErrorInfo | None = None) -> None:
    """One line per run; a failed run's line ends with its error class and message, followed
    by the traceback where there is one, so the cause is in the log at the first failure."""
    if outcome is Outcome.DONE and _hold_success(job, duration):
        return
    level = _FAILURE_LEVELS.get(outcome, logging.INFO) if outcome else logging.ERROR
    if not log.isEnabledFor(level):
        return
    name = outcome.value if outcome else "error"
    text = "job %s worker=%s id=%s queue=%s attempt=%s duration=%.4fs"
    args = [name, job.worker_name, job.id, job.queue, job.attempt, duration]
    # A success's line may wait for the batch's other lines (``log._Handler``); others go now.
    fields = {"job": job.log_context(), "outcome": name, "duration": duration,
              "held": level == logging.INFO}
    if error is not None and level > logging.INFO:
        text += " error=%s: %s"
        args += [error.error_class, error.message]
        fields["error"] = {"class": error.error_class, "message": error.message}
        if error.report or error.backtrace:
            text += "\n%s"
            args.append(error.report or "\n".join(error.backtrace))
    log.log(level, text, *args, extra=fields)


def _hold_success(job: Job, duration: float) -> bool:
    """The line of a run that succeeded, held (``log.hold_line``) as ``log_outcome``'s general
    path would log it; False when it was not (its level is off, or something else would see
    the record). Its own path, because it runs once per job: an f-string rather than ``%``,
    and the fields only a JSON line needs are made only for one."""
    if not log.isEnabledFor(logging.INFO):
        return True           # nothing to write, nor would the general path write anything
    text = (f"job done worker={job.worker_name} id={job.id} queue={job.queue} "
            f"attempt={job.attempt} duration={duration:.4f}s")
    return hold_line(log, logging.INFO, text, lambda: {
        "job": job.log_context(), "outcome": "done", "duration": duration, "held": True})

"""Every exit code, and what a child's exit means: its job's recovery; respawn, back off or quit.

The supervisor reaps a child, then asks here. A worker's exit is one of:
    stopped as asked     (stop message, recycling, shutdown kill): nothing to say
    killed by us         (past its timeout, silent): said when it was killed
    crashed when running (OOM, segfault, kill -9): an error; replaced at once, and its job
                         counts as a failed attempt (the housekeeper retries or buries it)
    failed at start      (before it was ready, or right after with no job): a crash loop.
                         The first error is logged with its traceback, repeats in one line;
                         respawns back off, and ``MAX_BOOT_FAILURES`` in a row give up.
"""

import logging

from jobrunner.errors import JobrunnerError
from jobrunner.process.messages import Recover
from jobrunner.process.signals import describe_exit

log = logging.getLogger("jobrunner.supervisor")

#: Exit codes of the `jobrunner` command (docs/troubleshooting.md lists what each means).
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_IMPORT, EXIT_UNAVAILABLE, EXIT_BOOT = 0, 1, 2, 3, 4, 5
EXIT_NOT_FOUND = 6

#: Exit code of a child whose loop crashed after it was ready.
CHILD_CRASHED = 1
#: Exit code of a child that failed before it was ready (gunicorn's WORKER_BOOT_ERROR).
CHILD_BOOT_ERROR = 3


class PoolBootError(JobrunnerError):
    """A pool's children (or its housekeeper) keep dying at start."""


def recovery_request(record):
    """The ``recover`` message for the housekeeper about the exited worker ``record``.

    ``crashed`` (the run counts as a failed attempt) unless the supervisor stopped it for
    shutdown, in which case what it held goes back unchanged. ``held``: the jobs it had
    fetched and not started, which go back unchanged either way. ``finished``: the jobs of its
    batch that succeeded, whose acks it may not have written yet: they are acked.
    """
    tokens = [record.running.token] if record.running else []
    crashed = record.kill_reason not in (None, "shutdown") or (
        record.running is not None and record.kill_reason is None)
    jobs = record.jobs
    succeeded = jobs.succeeded() if jobs is not None else []
    return Recover(child_id=record.child_id, tokens=tokens, crashed=bool(crashed),
                   reason=record.kill_reason or "died",
                   held=jobs.held() if jobs is not None else [],
                   finished=[{"token": job.token, "worker": job.worker}
                             for job in succeeded if job.token])


def judge_worker(pool, record, code, now, stopping):
    """Log what the exit of worker ``record`` means; a ``PoolBootError`` when it is time to
    give up, else None."""
    pid = record.pid
    if pool.recycling == pid:
        pool.recycling = None
        if code == 0:
            log.info("%s child %s recycled; a new one takes its place", pool.name, pid)
            return None
    if record.kill_reason == "shutdown" or (code == 0 and (record.stop_sent or stopping)):
        return None                   # stopped as asked
    if record.kill_reason:
        return None                   # killed for a timeout or silence: logged then
    if record.ready and (record.running or record.healthy):
        if code == 0 and not record.running:
            log.warning("%s child %s stopped on its own (a TERM sent to it?); starting "
                        "another", pool.name, pid)
        else:
            log.error("%s child %s exited unexpectedly (%s)%s", pool.name, pid,
                      describe_exit(code), f" running job {record.running.id} of "
                      f"{record.running.worker}" if record.running else "")
        return None
    return _boot_failed(pool, record, code, now)


def _boot_failed(pool, record, code, now):
    give_up = pool.boot.failed(now)
    error, trace = record.boot_error or (describe_exit(code), "")
    if code != CHILD_BOOT_ERROR and record.boot_error is None:
        error = f"{describe_exit(code)} before it was ready"
    if error != pool.boot.last_error:
        pool.boot.last_error = error
        log.error("%s child %s failed at start: %s%s", pool.name, record.pid, error,
                  "\n" + trace.rstrip() if trace else "")
    elif not give_up:
        log.warning("%s child %s failed at start again (%d in a row, same error); "
                    "retrying in %.1fs", pool.name, record.pid, pool.boot.failures,
                    pool.boot.next_spawn_at - now)
    if give_up:
        # Not logged: run() raises it once everything has stopped, and the CLI prints it.
        return PoolBootError(f"{pool.name} children keep failing at start "
                             f"({pool.boot.failures} in a row), giving up: {error}")
    return None


def judge_housekeeper(pool, record, code, now, stopping):
    """As ``judge_worker``, for a housekeeper."""
    if record.kill_reason == "shutdown" or (stopping and code == 0):
        return None
    if record.boot_error or not record.healthy:
        error = record.boot_error[0] if record.boot_error else describe_exit(code)
        log.error("%s housekeeper %s failed: %s%s", pool.name, record.pid, error,
                  "\n" + record.boot_error[1].rstrip() if record.boot_error else "")
        if pool.keeper_boot.failed(now):
            return PoolBootError(f"{pool.name} housekeeper keeps failing, giving up: {error}")
    elif not record.kill_reason:
        log.warning("%s housekeeper %s exited (%s); starting another", pool.name,
                    record.pid, describe_exit(code))
    return None

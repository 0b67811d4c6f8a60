"""Forking one child for a pool: the parent's bookkeeping and the child's first steps.

A new child closes everything of the parent's it must not share (other children's pipes, the
signal wake-up pipe), asks the kernel to signal it when the supervisor dies, and runs its loop.
If it fails before it is ready, it sends the error up its pipe in a ``fatal`` message and exits
with ``CHILD_BOOT_ERROR``: the supervisor decides whether to log the traceback (the first time)
and whether to try again or give up, so a broken deployment prints one clear error, not a
screenful per respawn.
"""

import logging
import os
import traceback

from jobrunner import log as logsetup
from jobrunner.process import proc
from jobrunner.process.channel import Channel
from jobrunner.process.child import ChildLoop
from jobrunner.process.exits import CHILD_BOOT_ERROR, CHILD_CRASHED
from jobrunner.process.messages import Fatal
from jobrunner.process.housekeeper import HousekeeperLoop
from jobrunner.process.pool import ChildRecord
from jobrunner.process.slot import JobSlot, JobTracker

log = logging.getLogger("jobrunner.supervisor")


def spawn(supervisor, pool, kind):
    """Fork a ``kind`` child ("worker" or "housekeeper") for ``pool``; its record, or None
    when the fork itself failed (out of memory or processes: the caller retries later)."""
    serial = pool.serial + 1 if kind == "worker" else 0
    ours, theirs = Channel.pair()
    slot = JobSlot() if kind == "worker" else None
    parent_pid = os.getpid()
    with supervisor.signals.blocked():
        try:
            pid = os.fork()
        except OSError as exc:
            ours.close()
            theirs.close()
            if slot is not None:
                slot.close()
            log.error("cannot fork a %s child: %s", pool.name, exc)
            return None
        if pid == 0:
            ours.close()
            _become_child(supervisor, pool, kind, serial, theirs, parent_pid, slot)  # no return
    theirs.close()
    if kind == "worker":
        pool.serial = serial
    record = ChildRecord(pid=pid, child_id=f"{supervisor.identity}:{pid}", pool=pool,
                         channel=ours, kind=kind,
                         jobs=JobTracker(slot) if slot is not None else None)
    if kind == "worker":
        pool.children[pid] = record
    return record


def _become_child(supervisor, pool, kind, serial, channel, parent_pid, slot):
    code = CHILD_CRASHED
    loop = None
    try:
        supervisor.signals.reset_in_child()
        for record in supervisor.all_children():
            record.channel.close()
        proc.die_with_parent(parent_pid)
        label = f"{pool.name}.{serial}" if kind == "worker" else f"{pool.name}.housekeeper"
        logsetup.set_label(label)
        if kind == "housekeeper":
            loop = HousekeeperLoop(pool.backend, supervisor.identity, channel, label, parent_pid)
        else:
            loop = ChildLoop(pool.backend, supervisor.registry, supervisor.settings, pool.queues,
                             f"{supervisor.identity}:{os.getpid()}", channel, label,
                             parent_pid=parent_pid, quiet=supervisor.quiet, slot=slot)
        code = loop.run()
    except BaseException as exc:
        if loop is not None and loop.ready:
            log.exception("child crashed")
        else:
            code = CHILD_BOOT_ERROR
            _report_boot_error(channel, exc)
    finally:
        logging.shutdown()
        os._exit(code)


def _report_boot_error(channel, exc):
    """Tell the supervisor why this child could not start; log it here if it cannot hear."""
    error = f"{type(exc).__name__}: {exc}".strip()
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if not channel.send(Fatal(error=error[:2000], traceback=trace[-20000:])):
        log.error("child failed at start: %s\n%s", error, trace)

"""Task results in the ``TaskResultRecord`` table: the row written at enqueue, what each run
writes into it, and the row read back as Django's ``TaskResult``."""

import datetime
import os
import socket
from traceback import format_exception

from django.db import transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from jobrunner.contrib.django.compat import (TaskError, TaskResult, TaskResultDoesNotExist,
                                             TaskResultStatus)
from jobrunner.contrib.django.models import TaskResultRecord

READY, RUNNING = TaskResultStatus.READY.value, TaskResultStatus.RUNNING.value
FAILED, SUCCESSFUL = TaskResultStatus.FAILED.value, TaskResultStatus.SUCCESSFUL.value


class RunLost(Exception):
    """A run ended without writing its outcome: the process running it died (killed, out of
    memory, or stopped past the task's timeout), and jobrunner ran the task again."""


def enqueued(result, task, database, job_id=""):
    """Write the row of a task just enqueued (``READY``), in the enqueue's transaction."""
    record = TaskResultRecord(
        id=result.id, job_id=job_id, backend=result.backend, task_path=task.module_path,
        queue_name=task.queue_name, priority=task.priority, run_after=task.run_after,
        status=READY, args=result.args, kwargs=result.kwargs, enqueued_at=result.enqueued_at)
    TaskResultRecord.objects.using(database).bulk_create([record])


def get(result_id, database):
    """The result ``result_id`` as Django's ``TaskResult``; ``TaskResultDoesNotExist`` if
    there is no such row."""
    try:
        record = TaskResultRecord.objects.using(database).get(id=result_id)
    except (TaskResultRecord.DoesNotExist, ValueError):
        raise TaskResultDoesNotExist(result_id) from None
    return to_result(record)


def to_result(record, task=None):
    """``record`` as a ``TaskResult`` of ``task`` (imported from its path when not given),
    with the queue, ``run_after`` and backend alias the task was enqueued with."""
    if task is None:
        task = import_string(record.task_path)
    task = task.using(queue_name=record.queue_name, run_after=record.run_after,
                      backend=record.backend)
    result = TaskResult(
        task=task, id=record.id, status=TaskResultStatus(record.status),
        enqueued_at=record.enqueued_at, started_at=record.started_at,
        finished_at=record.finished_at, last_attempted_at=record.last_attempted_at,
        args=record.args, kwargs=record.kwargs, backend=record.backend,
        errors=[TaskError(exception_class_path=error["exception_class_path"],
                          traceback=error["traceback"]) for error in record.errors],
        worker_ids=list(record.worker_ids))
    object.__setattr__(result, "_return_value", record.return_value)
    return result


def worker_id():
    """This process as one of a result's ``worker_ids``: ``<host>:<pid>``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def run_started(payload, task, job, database):
    """Mark the run of ``job`` started (``RUNNING``, this process in ``worker_ids``) and
    return the row. A row still ``RUNNING`` belongs to a run that died before it wrote its
    outcome: that run gets a ``RunLost`` error.

    A row not there yet is written from the job, unless the enqueue's own comes first: a job
    pushed to Redis outside a transaction may start before the enqueue's commit, and then
    the insert waits for that commit and leaves its row alone. A row deleted since the
    enqueue is written anew the same way."""
    now = timezone.now()
    with transaction.atomic(using=database):
        record = _locked(payload["result_id"], database)
        if record is None:
            TaskResultRecord.objects.using(database).bulk_create([TaskResultRecord(
                id=payload["result_id"], backend=payload["backend"], task_path=task.module_path,
                queue_name=job.queue, args=payload["args"], kwargs=payload["kwargs"],
                enqueued_at=_from_epoch(job.enqueued_at) or now)], ignore_conflicts=True)
            record = _locked(payload["result_id"], database)
        if record.status == RUNNING:
            record.errors.append(_error_entry(RunLost(
                "the run before this one ended without writing its outcome")))
        record.status = RUNNING
        record.job_id = job.id or ""
        record.started_at = record.started_at or now
        record.last_attempted_at = now
        record.worker_ids.append(worker_id())
        record.save(using=database)
    return record


def run_succeeded(record, return_value, database):
    """The run returned ``return_value`` (already JSON): ``SUCCESSFUL``."""
    record.status, record.finished_at = SUCCESSFUL, timezone.now()
    record.return_value = return_value
    TaskResultRecord.objects.using(database).filter(id=record.id).update(
        status=record.status, finished_at=record.finished_at, return_value=return_value)
    return record


def run_failed(record, error, final, database):
    """The run raised ``error``: ``FAILED`` when ``final``, else ``READY`` for the retry."""
    with transaction.atomic(using=database):
        locked = _locked(record.id, database) or record
        locked.errors.append(_error_entry(error))
        locked.status = FAILED if final else READY
        locked.finished_at = timezone.now() if final else None
        locked.save(using=database)
    return locked


def run_put_back(record, database):
    """The run was cut off by a stop and its job put back unchanged: ``READY``, and the run
    is no attempt, so this process leaves ``worker_ids`` again."""
    with transaction.atomic(using=database):
        locked = _locked(record.id, database) or record
        mine = worker_id()
        if mine in locked.worker_ids:
            del locked.worker_ids[len(locked.worker_ids) - 1 - locked.worker_ids[::-1].index(mine)]
        locked.status = READY
        locked.save(using=database)


def _locked(result_id, database):
    return (TaskResultRecord.objects.using(database).select_for_update()
            .filter(id=result_id).first())


def _error_entry(error):
    kind = type(error)
    return {"exception_class_path": f"{kind.__module__}.{kind.__qualname__}",
            "traceback": "".join(format_exception(error))}


def _from_epoch(seconds):
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return moment if timezone.is_aware(timezone.now()) else timezone.make_naive(moment)

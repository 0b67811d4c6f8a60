"""``JobrunnerBackend``: Django's Tasks framework on jobrunner, on Postgres (pgmq) or on Redis
in Sidekiq's format, with results in the project's database."""

import contextlib

from django.apps import apps
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

import jobrunner
from jobrunner.backends import NAMES
from jobrunner.contrib.django.compat import (BaseTaskBackend, InvalidTask, TaskResult,
                                             TaskResultStatus, task_enqueued)
from jobrunner.contrib.django.runner import worker_for
from jobrunner.errors import ConfigError
from jobrunner.job import encode_args, new_job_id
from jobrunner.registry import BACKENDS

#: What ``OPTIONS`` may hold, with the defaults.
DEFAULTS = {"backend": "pgmq", "database": "default", "redis": None, "max_retries": 0,
            "timeout": 60}

_known = {}     # alias -> {task path: Task}: every task this process has validated


class JobrunnerBackend(BaseTaskBackend):
    """Enqueues each task as a jobrunner job that ``manage.py jobrunner`` runs.

    ``OPTIONS``: ``backend`` ("pgmq" or "sidekiq"), ``database`` (the Django database that
    holds the results, and on pgmq the jobs too: a task is enqueued in its transaction),
    ``redis`` (sidekiq: a ``redis.Redis``, or the dotted path of one or of a function making
    one), ``max_retries`` (jobrunner's retries after a failed run; 0: a failed run is
    ``FAILED``) and ``timeout`` (seconds a run may take; None: no limit).
    """

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    #: jobrunner takes a queue's jobs in the order they became due; put urgent tasks on
    #: queues of their own, served first (``--queues``) or by their own children (``--pool``).
    supports_priority = False

    def __init__(self, alias, params):
        super().__init__(alias, params)
        unknown = sorted(set(self.options) - set(DEFAULTS))
        if unknown:
            raise ImproperlyConfigured(f"TASKS[{alias!r}]['OPTIONS']: unknown option(s) "
                                       f"{', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
        options = dict(DEFAULTS, **self.options)
        self.jobrunner_backend = options["backend"]
        if self.jobrunner_backend not in NAMES:
            raise ImproperlyConfigured(f"TASKS[{alias!r}]['OPTIONS']['backend'] must be one of "
                                       f"{', '.join(NAMES)}, got {self.jobrunner_backend!r}")
        self.database = options["database"]
        self.max_retries, self.timeout = options["max_retries"], options["timeout"]
        self.enqueuer = (jobrunner.PgEnqueuer if self.jobrunner_backend == "pgmq"
                         else jobrunner.SidekiqEnqueuer)
        self._redis = options["redis"]
        try:
            for queue in sorted(self.queues):
                BACKENDS[self.jobrunner_backend](queue, f"TASKS[{alias!r}]['QUEUES']")
            type("Options", (jobrunner.Worker,), {"max_retries": self.max_retries,
                                                   "timeout": self.timeout})
        except ConfigError as exc:
            raise ImproperlyConfigured(f"TASKS[{alias!r}]: {exc}") from None

    def validate_task(self, task):
        super().validate_task(task)
        try:
            BACKENDS[self.jobrunner_backend](task.queue_name, task.module_path)
        except ConfigError as exc:
            raise InvalidTask(str(exc)) from None
        _known.setdefault(self.alias, {}).setdefault(task.module_path, task)

    def known_tasks(self):
        """The tasks of this alias defined in this process so far (``manage.py jobrunner``
        imports the modules that define them first)."""
        return list(_known.get(self.alias, {}).values())

    def enqueue(self, task, args, kwargs):
        from jobrunner.contrib.django import results
        self.validate_task(task)
        result = TaskResult(
            task=task, id=new_job_id(), status=TaskResultStatus.READY,
            enqueued_at=timezone.now(), started_at=None, last_attempted_at=None,
            finished_at=None, args=args, kwargs=kwargs, backend=self.alias, errors=[],
            worker_ids=[])
        payload = {"result_id": result.id, "backend": self.alias, "args": result.args,
                   "kwargs": result.kwargs}
        worker = worker_for(self, task.module_path, task.queue_name)
        encode_args(worker.name, payload)     # a TypeError now, before anything is written
        at = task.run_after
        if at is not None and timezone.is_naive(at):
            at = timezone.make_aware(at)
        in_block = connections[self.database].in_atomic_block
        # Outside a transaction, the job and its result row are written in one of their own.
        # In the caller's, on pgmq the job is written in it; on Redis it is pushed when it
        # commits, and not at all if it rolls back.
        with contextlib.nullcontext() if in_block else transaction.atomic(using=self.database):
            if self.jobrunner_backend == "pgmq":
                job_id = _push(worker, connections[self.database], payload, at)
                results.enqueued(result, task, self.database, job_id)
            else:
                results.enqueued(result, task, self.database)
                if in_block:
                    transaction.on_commit(lambda: _push(worker, self.redis(), payload, at),
                                          using=self.database)
                else:
                    _push(worker, self.redis(), payload, at)
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id):
        from jobrunner.contrib.django import results
        return results.get(result_id, self.database)

    def redis(self):
        """The Redis client of the ``redis`` option."""
        client = self._redis
        if isinstance(client, str):
            client = import_string(client)
        if callable(client) and not hasattr(client, "lpush"):
            client = client()
        if client is None:
            raise ImproperlyConfigured(f"TASKS[{self.alias!r}]: the sidekiq backend needs "
                                       "OPTIONS['redis'], a redis.Redis client")
        self._redis = client
        return client

    def check(self, **kwargs):
        where = f"TASKS[{self.alias!r}]"
        if not apps.is_installed("jobrunner.contrib.django"):
            yield checks.Error(f"{where} uses JobrunnerBackend, which keeps task results in "
                               "its app's table", hint="add 'jobrunner.contrib.django' to "
                               "INSTALLED_APPS and run migrate", id="jobrunner.E001")
        if self.database not in settings.DATABASES:
            yield checks.Error(f"{where}: OPTIONS['database'] {self.database!r} is not in "
                               "DATABASES", id="jobrunner.E002")
        elif (self.jobrunner_backend == "pgmq"
              and connections[self.database].vendor != "postgresql"):
            yield checks.Error(f"{where}: the pgmq backend needs a PostgreSQL database; "
                               f"{self.database!r} is {connections[self.database].vendor}",
                               id="jobrunner.E003")
        if self.jobrunner_backend == "sidekiq" and self._redis is None:
            yield checks.Error(f"{where}: the sidekiq backend needs OPTIONS['redis'], a "
                               "redis.Redis client or the dotted path of one",
                               id="jobrunner.E004")


def _push(worker, conn, payload, at):
    if at is None:
        return worker.enqueue(conn, payload)
    return worker.enqueue_at(conn, at, payload)

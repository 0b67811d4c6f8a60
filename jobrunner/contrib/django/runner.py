"""What runs Django Tasks in a supervisor's children: a jobrunner Worker per task, named by the
task's import path, and the registry ``manage.py jobrunner`` hands to the supervisor."""

from django.db import close_old_connections, reset_queries
from django.utils.module_loading import import_string

from jobrunner.errors import ConfigError, ShutdownRequested
from jobrunner.lifecycle import retry_budget
from jobrunner.registry import BACKENDS, Registry
from jobrunner.retry import should_retry
from jobrunner.worker import Worker

#: The registry of ``manage.py jobrunner``: the supervisor is given ``runner:REGISTRY``.
REGISTRY = None

_workers = {}          # (alias, task path, queue) -> TaskWorker subclass


class TaskWorker(Worker):
    """Runs the Django Task whose import path is its ``name``; ``worker_for`` makes one
    subclass per task and queue. Its args: ``{"result_id", "backend", "args", "kwargs"}``."""

    def handle(self, args):
        job = DjangoJobs.job
        if job is None or job.args is not args:
            raise ConfigError(f"{self.name}: a Django task runs under `manage.py jobrunner`, "
                              "whose middleware hands each job to its worker")
        return run_task(type(self), job, args)


class QueueWorker(Worker):
    """Makes the supervisor serve a queue of ``QUEUES`` that no task names as its own, for
    the tasks sent there with ``.using(queue_name=...)``; no job names it."""

    def handle(self, args):
        raise ConfigError(f"{self.name} runs no job of its own")


class DjangoJobs:
    """Middleware around every job of ``manage.py jobrunner``: Django's connections are
    checked before and after each job as around a request (a broken or expired connection is
    closed; the next query opens a new one), and the job is handed to its ``TaskWorker``,
    whose ``handle`` gets only the args while a task's result needs the job's id, attempt
    and queue."""

    job = None

    def before(self, job):
        DjangoJobs.job = job
        reset_queries()
        close_old_connections()

    def after(self, job, outcome):
        close_old_connections()


def worker_for(backend, task_path, queue):
    """The Worker class that carries ``task_path`` to ``queue`` for ``backend`` (a
    ``JobrunnerBackend``), with that backend's enqueuer, retries and timeout."""
    key = (backend.alias, task_path, queue)
    worker = _workers.get(key)
    if worker is None:
        worker = _workers[key] = type("TaskWorker", (TaskWorker,), {
            "__module__": __name__, "__qualname__": f"TaskWorker[{task_path}@{queue}]",
            "name": task_path, "queue": queue, "enqueuer": backend.enqueuer,
            "max_retries": backend.max_retries, "timeout": backend.timeout})
    return worker


def build_registry(backends, extra=None):
    """A Registry with every task known to ``backends`` (the project's ``JobrunnerBackend``
    instances), each on all their jobrunner backends so that ``.using(backend=...)`` works
    (with the retries and timeout of the first alias it was seen with),
    a ``QueueWorker`` for each of their queues that no task names, and the workers,
    schedules and middleware of ``extra`` (a Registry of the project's own Workers)."""
    registry = Registry()
    names = tuple(dict.fromkeys(backend.jobrunner_backend for backend in backends))
    for backend in backends:
        for task in backend.known_tasks():
            if registry.lookup(task.module_path) is None:   # the alias seen first wins
                registry.register(worker_for(backend, task.module_path, task.queue_name),
                                  backends=[name for name in names
                                            if _takes(name, task.queue_name)])
    for backend in backends:
        served = registry.queues(backend.jobrunner_backend)
        for queue in sorted(set(backend.queues) - set(served)):
            registry.register(type("QueueWorker", (QueueWorker,), {
                "__module__": __name__,
                "name": f"jobrunner.contrib.django.queue:{backend.jobrunner_backend}:{queue}",
                "queue": queue, "timeout": backend.timeout}),
                backends=backend.jobrunner_backend)
    registry.add_middleware(DjangoJobs())
    if extra is not None:
        for name in extra.backends():
            for worker in extra.workers(name):
                registry.register(worker, backends=name)
        registry.periodic.extend(extra.periodic)
        registry.middleware.extend(extra.middleware)
    return registry


def _takes(backend_name, queue):
    """Whether the jobrunner backend ``backend_name`` accepts the queue name ``queue``."""
    try:
        BACKENDS[backend_name](queue, queue)
    except ConfigError:
        return False
    return True


def run_task(worker, job, payload):
    """Run one task's job in this child, writing its result: ``RUNNING``, then
    ``SUCCESSFUL`` with the return value, or the error with ``FAILED`` (last attempt) or
    ``READY`` (jobrunner retries it); Django's task signals are sent as its own backends
    send them."""
    from jobrunner.contrib.django import results
    from jobrunner.contrib.django.compat import (TaskContext, normalize_json, task_backends,
                                                 task_finished, task_started)
    backend = task_backends[payload["backend"]]
    task = import_string(worker.name)
    database, sender = backend.database, type(backend)
    record = results.run_started(payload, task, job, database)
    result = results.to_result(record, task)
    task_started.send(sender=sender, task_result=result)
    try:
        context = (TaskContext(task_result=result),) if task.takes_context else ()
        value = task.call(*context, *payload["args"], **payload["kwargs"])
        value = normalize_json(value)     # a value JSON cannot hold fails the run
    except ShutdownRequested:
        results.run_put_back(record, database)
        raise
    except BaseException as exc:
        final = not should_retry(job.attempt, retry_budget(job, worker))
        record = results.run_failed(record, exc, final, database)
        if final:
            task_finished.send(sender=sender, task_result=results.to_result(record, task))
        raise
    record = results.run_succeeded(record, value, database)
    task_finished.send(sender=sender, task_result=results.to_result(record, task))
    return value

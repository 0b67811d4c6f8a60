"""Django's Tasks framework where it is: ``django.tasks`` (Django 6.0+), else the
``django-tasks`` backport (``django_tasks``, for Django 5.2)."""

try:
    from django.tasks import TaskContext, TaskResult, TaskResultStatus, task_backends
    from django.tasks import exceptions
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import TaskError
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils.json import normalize_json
    FRAMEWORK = "django.tasks"
except ImportError:
    from django_tasks import TaskContext, TaskResult, TaskResultStatus, task_backends
    from django_tasks import exceptions
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import TaskError
    from django_tasks.signals import task_enqueued, task_finished, task_started
    from django_tasks.utils import normalize_json
    FRAMEWORK = "django_tasks"

# Django 6 names them InvalidTask and TaskResultDoesNotExist; the backport InvalidTaskError.
InvalidTask = getattr(exceptions, "InvalidTask", None) or exceptions.InvalidTaskError
TaskResultDoesNotExist = exceptions.TaskResultDoesNotExist

__all__ = ["BaseTaskBackend", "FRAMEWORK", "InvalidTask", "TaskContext", "TaskError",
           "TaskResult", "TaskResultDoesNotExist", "TaskResultStatus", "normalize_json",
           "task_backends", "task_enqueued", "task_finished", "task_started"]

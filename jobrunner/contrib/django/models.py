"""Where Django Task results live: one row per enqueued task, in the project's own database."""

from django.db import models

#: The values of Django's ``TaskResultStatus``, written out so that the migration does not
#: depend on which Tasks framework (Django's own or the backport) is installed.
STATUSES = [("READY", "Ready"), ("RUNNING", "Running"), ("FAILED", "Failed"),
            ("SUCCESSFUL", "Successful")]


class TaskResultRecord(models.Model):
    """A task's result as ``JobrunnerBackend.get_result`` reads it back.

    Written in the enqueueing request's transaction (``READY``), then by the child that runs
    the task: ``RUNNING`` when a run starts, ``SUCCESSFUL`` or ``FAILED`` when it ends, or
    ``READY`` again when jobrunner will retry it. ``errors`` holds one entry per failed run:
    ``{"exception_class_path", "traceback"}``. Rows are kept until deleted.
    """

    id = models.CharField(primary_key=True, max_length=64)
    #: The jobrunner job carrying the task (``jobrunner job ID``), once a run has started;
    #: on pgmq from the enqueue on.
    job_id = models.CharField(max_length=64, blank=True, default="")
    backend = models.CharField(max_length=100)            # the alias in settings.TASKS
    task_path = models.CharField(max_length=255)
    queue_name = models.CharField(max_length=100)
    priority = models.IntegerField(default=0)
    run_after = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=STATUSES, default="READY")
    args = models.JSONField(default=list)
    kwargs = models.JSONField(default=dict)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    last_attempted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    return_value = models.JSONField(null=True, blank=True)
    errors = models.JSONField(default=list)
    worker_ids = models.JSONField(default=list)

    class Meta:
        db_table = "jobrunner_task_result"
        indexes = [models.Index(fields=["status", "finished_at"],
                                name="jobrunner_task_status_idx")]

    def __str__(self):
        return f"{self.task_path} {self.id} {self.status}"

"""The Django app ``jobrunner.contrib.django``: the task result table and ``manage.py
jobrunner``."""

from django.apps import AppConfig


class JobrunnerConfig(AppConfig):
    """Label ``jobrunner``: its table is ``jobrunner_task_result``."""

    name = "jobrunner.contrib.django"
    label = "jobrunner"
    verbose_name = "jobrunner"

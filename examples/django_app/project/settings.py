"""Settings of the example: Postgres from DATABASE_URL, Redis from REDIS_URL, and jobrunner as
the Tasks backend, on pgmq ("default", "retrying") and on Redis ("redis")."""

import os
from urllib.parse import parse_qs, unquote, urlsplit

import django
import redis

SECRET_KEY = "an example's key: set your own"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"
MIDDLEWARE = []
# auth, its content types and sessions: the dashboard mounted in project/wsgi.py opens for staff
INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions",
                  "jobrunner.contrib.django", "signups"]
if django.VERSION < (6, 0):
    INSTALLED_APPS.append("django_tasks")      # the backport of django.tasks, for Django 5.2


def database_from_url(url):
    """DATABASES["default"] for a postgresql:// URL (a socket directory may come as ?host=)."""
    parts = urlsplit(url)
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    return {"ENGINE": "django.db.backends.postgresql", "NAME": unquote(parts.path[1:]),
            "USER": unquote(parts.username or ""), "PASSWORD": unquote(parts.password or ""),
            "HOST": query.pop("host", parts.hostname or ""), "PORT": parts.port or "",
            "OPTIONS": query}


DATABASES = {"default": database_from_url(
    os.environ.get("DATABASE_URL", "postgresql://127.0.0.1:5432/jobrunner_django_example"))}
if os.environ.get("EXAMPLE_TESTS_IN_DATABASE"):
    # The tests run in that very database (with --keepdb), which has pgmq installed,
    # instead of creating one.
    DATABASES["default"]["TEST"] = {"NAME": DATABASES["default"]["NAME"]}

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
#: The same database as a libpq URL, for jobrunner's dashboard (project/wsgi.py).
JOBRUNNER_PG_DSN = os.environ.get("DATABASE_URL",
                                  "postgresql://127.0.0.1:5432/jobrunner_django_example")

TASKS = {
    "default": {
        "BACKEND": "jobrunner.contrib.django.JobrunnerBackend",
        "QUEUES": ["default", "reports"],
        "OPTIONS": {"backend": "pgmq"},
    },
    "retrying": {
        "BACKEND": "jobrunner.contrib.django.JobrunnerBackend",
        "QUEUES": ["default"],
        "OPTIONS": {"backend": "pgmq", "max_retries": 2, "timeout": 30},
    },
    "redis": {
        "BACKEND": "jobrunner.contrib.django.JobrunnerBackend",
        "QUEUES": ["default"],
        "OPTIONS": {"backend": "sidekiq", "redis": redis.Redis.from_url(REDIS_URL)},
    },
}

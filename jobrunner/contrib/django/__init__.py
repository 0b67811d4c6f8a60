"""jobrunner for Django: a Tasks backend (``JobrunnerBackend``), ``manage.py jobrunner``, and
the model that keeps task results; add ``"jobrunner.contrib.django"`` to ``INSTALLED_APPS``.

``Worker.enqueue(django.db.connection, args)`` needs none of this: ``PgEnqueuer`` takes
Django's connection as it is (see docs/django.md).
"""

from typing import Any


def __getattr__(name: str) -> Any:
    # Loaded on first use: this package is also the Django app, imported while the app
    # registry is still being populated, before the Tasks framework may be imported.
    if name == "JobrunnerBackend":
        from jobrunner.contrib.django.backend import JobrunnerBackend
        return JobrunnerBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

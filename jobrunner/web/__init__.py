"""jobrunner's web dashboard: ``make_app(...)`` is a WSGI app (Flask) for both backends.

Serve it with ``jobrunner web`` or mount it under a prefix in a Flask or Django project
(``docs/dashboard.md``). It needs Flask: ``pip install 'jobrunner[web]'``.
"""

try:
    import flask  # noqa: F401
except ImportError:         # pragma: no cover  (the dev extra has Flask)
    raise ImportError("the jobrunner dashboard needs Flask: "
                      "pip install 'jobrunner[web]'") from None

from jobrunner.web.app import make_app  # noqa: E402

__all__ = ["make_app"]

"""The example's WSGI application: Django, with jobrunner's dashboard mounted at /admin/jobs for
staff users (the Django session decides who is one)."""

import os
from importlib import import_module

from django.core.wsgi import get_wsgi_application
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from jobrunner.web import make_app

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_app = get_wsgi_application()


def staff_only(environ):
    """True for a request whose Django session belongs to an active staff user."""
    from django.conf import settings
    from django.contrib.auth import get_user
    from django.core.handlers.wsgi import WSGIRequest
    from django.db import close_old_connections

    request = WSGIRequest(environ)            # reads headers and cookies, not the body
    engine = import_module(settings.SESSION_ENGINE)
    request.session = engine.SessionStore(request.COOKIES.get(settings.SESSION_COOKIE_NAME))
    try:
        user = get_user(request)
        return user.is_active and user.is_staff
    finally:
        close_old_connections()               # as Django does at the end of a request


def _dashboard():
    from django.conf import settings
    return make_app({"pg_dsn": settings.JOBRUNNER_PG_DSN, "redis_url": settings.REDIS_URL},
                    authorize=staff_only, basic_auth="",
                    secret_key=os.environ.get("JOBRUNNER_WEB_SECRET"))


application = DispatcherMiddleware(django_app, {"/admin/jobs": _dashboard()})

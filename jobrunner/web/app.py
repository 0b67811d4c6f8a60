"""``make_app``: the dashboard as a Flask (WSGI) app, to serve alone or mount under a prefix.

The pages are in ``web/pages.py``, the actions (POSTs) in ``web/actions.py``; both talk to the
backends only through the ``Inspector`` interface (``backends/inspector.py``), one inspector per
request from ``web/connections.py``. Links are built with ``url_for``, so the app works under
any ``SCRIPT_NAME`` (a dispatcher mount in Flask or Django, or a reverse proxy's prefix).
"""

from __future__ import annotations

import os
import secrets
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import flask

from jobrunner.version import __version__
from jobrunner.web import actions, pages, security
from jobrunner.web.common import MENU, Dashboard, EnqueueHook, dashboard, plain
from jobrunner.web.connections import BackendGone, Backends
from jobrunner.web.format import FILTERS

if TYPE_CHECKING:
    from jobrunner.backends.inspector import Inspector
    from jobrunner.config import Settings

HERE = os.path.dirname(os.path.abspath(__file__))
def make_app(config: Mapping[str, Any] | Settings | None = None, *,
             backends: Sequence[str] | None = None,
             authorize: Callable[[Mapping[str, Any]], bool] | None = None,
             read_only: bool = False, basic_auth: str | None = None,
             secret_key: str | bytes | None = None, enqueue: EnqueueHook | None = None,
             inspectors: Mapping[str, Callable[[], Inspector]] | None = None,
             page_size: int = 25, refresh_seconds: int = 5, secure_cookies: bool = False,
             environ: Mapping[str, str] | None = None) -> flask.Flask:
    """The dashboard as a WSGI app (a ``flask.Flask``).

    ``config``: connection flags as the CLI takes them (``{"pg_dsn": ..., "redis_url": ...}``;
    the environment fills in the rest, as for every command) or a ``jobrunner.config.Settings``.
    ``backends``: show only these (each must answer); default: every backend whose setting is
    given, and the others when their default server answers.
    ``authorize(environ) -> bool``: called on every request; False answers 403.
    ``read_only``: no buttons, and every POST answers 403.
    ``basic_auth``: ``"USER:PASS"``; default ``JOBRUNNER_WEB_BASIC_AUTH``; "" for none.
    ``secret_key``: signs the session cookie that holds the CSRF token; default
    ``JOBRUNNER_WEB_SECRET``, else random per process (give one when several processes serve
    the dashboard behind one address).
    ``enqueue(backend, worker, args) -> job id``: how "enqueue now" on the Periodic page sends a
    schedule's job (the dashboard knows no worker code); without it the button is shown only
    where the backend's inspector can enqueue.
    ``inspectors``: ``{name: () -> Inspector}`` to open the inspectors yourself instead.
    """
    env = os.environ if environ is None else environ
    if basic_auth is None:
        basic_auth = env.get("JOBRUNNER_WEB_BASIC_AUTH")
    credentials = security.parse_credentials(basic_auth)
    basic = security.BasicAuth(*credentials) if credentials else None
    app = flask.Flask("jobrunner.web", root_path=HERE, template_folder="templates",
                      static_folder="static", static_url_path="/static")
    app.secret_key = secret_key or env.get("JOBRUNNER_WEB_SECRET") or secrets.token_bytes(32)
    app.config.update(SESSION_COOKIE_NAME="jobrunner_web", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Strict", SESSION_COOKIE_SECURE=secure_cookies,
                      MAX_CONTENT_LENGTH=1024 * 1024)
    app.jinja_env.autoescape = True
    app.jinja_env.trim_blocks = app.jinja_env.lstrip_blocks = True
    app.jinja_env.filters.update(FILTERS)
    app.extensions["jobrunner"] = Dashboard(
        Backends(config, backends=backends, inspectors=inspectors, environ=environ),
        read_only, page_size, refresh_seconds, enqueue)

    @app.before_request
    def guard():
        status = security.refusal(flask.request.environ, basic, authorize)
        if status == 401:
            return flask.Response("authentication required\n", 401, {
                "WWW-Authenticate": f'Basic realm="{security.BasicAuth.realm}", charset="UTF-8"',
                "Content-Type": "text/plain; charset=utf-8"})
        if status == 403:
            return plain(403, "forbidden")
        if flask.request.method not in ("GET", "HEAD"):
            if read_only:
                return plain(403, "the dashboard is read-only")
            sent = flask.request.form.get(security.CSRF_FIELD)
            if not security.csrf_valid(flask.session, sent):
                return plain(403, "missing or wrong CSRF token; reload the page and try again")
        return None

    @app.after_request
    def headers(response):
        security.add_headers(response.headers)
        return response

    @app.errorhandler(BackendGone)
    def gone(error):
        return flask.render_template("error.html", title="Backend unavailable",
                                     message=f"{error.name}: {error.reason}"), 503

    @app.context_processor
    def shared():
        return {"csrf_token": lambda: security.csrf_token(flask.session), "menu": MENU,
                "read_only": read_only, "version": __version__,
                "refresh_seconds": refresh_seconds, "shown_backends": _shown_names}

    pages.register(app)
    actions.register(app)
    return app


def _shown_names() -> list[dict[str, Any]]:
    return [{"name": b.name, "status": b.status} for b in dashboard().backends.shown()]

"""What the dashboard's pages and actions share: the app's options, the menu, and finding the
backend a URL names."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import flask

if TYPE_CHECKING:
    from jobrunner.web.connections import Backend, Backends

#: The list pages: URL part -> (``Inspector.jobs`` kind, title).
KINDS = {"scheduled": ("scheduled", "Scheduled"), "retries": ("retrying", "Retries"),
         "dead": ("dead", "Dead")}
#: The URL part of each kind's list.
SLUGS = {kind: slug for slug, (kind, _) in KINDS.items()}
#: The pages of each backend, in the menu's order: endpoint, title.
MENU = (("overview", "Overview"), ("queues", "Queues"), ("busy", "Busy"),
        ("jobs", "Scheduled", "scheduled"), ("jobs", "Retries", "retries"),
        ("jobs", "Dead", "dead"), ("periodic", "Periodic"))
#: What the buttons of each action say.
ACTION_LABELS = {"run": "Retry now", "delete": "Delete", "kill": "Kill"}
SCHEDULED_LABELS = dict(ACTION_LABELS, run="Enqueue now")

#: ``enqueue(backend, worker, args) -> job id``: how "enqueue now" of a schedule sends its job.
EnqueueHook = Callable[[str, str, Any], Any]


class Dashboard:
    """What the views share: the backends and the options of ``make_app``."""

    def __init__(self, backends: Backends, read_only: bool, page_size: int,
                 refresh_seconds: int, enqueue: EnqueueHook | None):
        self.backends = backends
        self.read_only = read_only
        self.page_size = page_size
        self.refresh_seconds = refresh_seconds
        self.enqueue = enqueue


def dashboard() -> Dashboard:
    return flask.current_app.extensions["jobrunner"]


def backend_or_404(name: str) -> Backend:
    backend = dashboard().backends.get(name)
    if backend is None:
        flask.abort(404)
    return backend


def action_labels(kind: str) -> dict[str, str]:
    return SCHEDULED_LABELS if kind == "scheduled" else ACTION_LABELS


def plain(status: int, text: str) -> flask.Response:
    return flask.Response(text + "\n", status, {"Content-Type": "text/plain; charset=utf-8"})


def local_path(value: str | None, default: str) -> str:
    """``value`` when it is a path of this app (from a form's ``next``), else ``default``: a
    redirect never leaves the dashboard."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    return value

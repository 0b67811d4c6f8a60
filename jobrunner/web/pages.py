"""The dashboard's pages (GET only; none changes anything), one set per backend.

Every page reads one backend through one inspector: Overview (``stats``, ``history``),
Queues (``stats``), Busy (``processes``), the Scheduled, Retries and Dead lists (``jobs``,
paged by the backend: a page asks for one entry more than it shows, to know whether another
page follows), a job (``find_job``) and Periodic (``schedules``).
"""

from __future__ import annotations

import time
from typing import Any

import flask

from jobrunner.backends.inspector import ACTIONS
from jobrunner.web.charts import history_charts
from jobrunner.web.common import (KINDS, SLUGS, action_labels, backend_or_404, dashboard)

#: Minutes of history the overview reads: a day.
HISTORY_MINUTES = 1440
#: The longest filter text taken from a URL.
FILTER_CHARS = 200


def register(app: flask.Flask) -> None:
    app.add_url_rule("/", "index", index)
    app.add_url_rule("/<backend>/", "overview", overview)
    app.add_url_rule("/<backend>/queues", "queues", queues)
    app.add_url_rule("/<backend>/queues/purge", "purge_confirm", purge_confirm)
    app.add_url_rule("/<backend>/busy", "busy", busy)
    app.add_url_rule("/<backend>/periodic", "periodic", periodic)
    app.add_url_rule("/<backend>/job", "job", job)
    app.add_url_rule("/<backend>/<any(scheduled, retries, dead):slug>", "jobs", jobs)


def render(template: str, backend: str, **values: Any) -> str:
    return flask.render_template(template, backend=backend, now=time.time(),
                                 here=_here(), **values)


def _here() -> str:
    """This page's path and query, for the ``next`` field of its forms."""
    request = flask.request
    query = request.query_string.decode("latin-1")
    return request.path + (f"?{query}" if query else "")


def index():
    shown = dashboard().backends.shown()
    if not shown:
        return flask.render_template("error.html", title="No backend", message=(
            "No backend answered: give --pg-dsn or --redis-url (or JOBRUNNER_PG_DSN, "
            "JOBRUNNER_REDIS_URL) and restart the dashboard.")), 503
    return flask.redirect(flask.url_for("overview", backend=shown[0].name))


def overview(backend):
    backend_or_404(backend)
    with dashboard().backends.inspector(backend) as inspector:
        stats = inspector.stats()
        history = inspector.history(HISTORY_MINUTES)
    processes = stats["processes"]
    children = {"busy": sum(p.get("busy") or 0 for p in processes),
                "concurrency": sum(p.get("concurrency") or 0 for p in processes)}
    return render("overview.html", backend, stats=stats, charts=history_charts(history),
                  children=children, title="Overview")


def queues(backend):
    backend_or_404(backend)
    with dashboard().backends.inspector(backend) as inspector:
        stats = inspector.stats()
    return render("queues.html", backend, queues=stats["queues"], title="Queues")


def purge_confirm(backend):
    backend_or_404(backend)
    queue = _required("queue")
    with dashboard().backends.inspector(backend) as inspector:
        waiting = inspector.depths([queue])["queues"][queue]["waiting"]
    return render("purge.html", backend, queue=queue, waiting=waiting, title="Purge a queue")


def busy(backend):
    backend_or_404(backend)
    with dashboard().backends.inspector(backend) as inspector:
        processes = inspector.processes()
    running = [dict(job, identity=p["identity"]) for p in processes for job in p["running"]]
    running.sort(key=lambda job: job.get("run_at") or 0)
    return render("busy.html", backend, processes=processes, running=running, title="Busy")


def jobs(backend, slug):
    backend_or_404(backend)
    kind, title = KINDS[slug]
    size = dashboard().page_size
    page = max(1, _int("page", 1))
    filters = {"queue": _text("queue"), "worker": _text("worker"), "error": _text("error")}
    with dashboard().backends.inspector(backend) as inspector:
        entries = inspector.jobs(kind, limit=size + 1, offset=(page - 1) * size, **filters)
    more = len(entries) > size
    return render("jobs.html", backend, slug=slug, kind=kind, title=title,
                  entries=entries[:size], page=page, more=more, size=size, filters=filters,
                  actions=ACTIONS[kind], labels=action_labels(kind),
                  first=(page - 1) * size + 1,
                  filters_args={k: v for k, v in filters.items() if v is not None})


def job(backend):
    backend_or_404(backend)
    job_id = _required("id")
    with dashboard().backends.inspector(backend) as inspector:
        found = inspector.find_job(job_id)
    places = [dict(entry, slug=SLUGS.get(entry["state"]),
                   actions=ACTIONS.get(entry["state"], ()),
                   labels=action_labels(entry["state"])) for entry in found]
    return render("job.html", backend, job_id=job_id, found=places, title=f"Job {job_id}")


def periodic(backend):
    backend_or_404(backend)
    with dashboard().backends.inspector(backend) as inspector:
        schedules = inspector.schedules()
    return render("periodic.html", backend, schedules=schedules, title="Periodic",
                  hook=dashboard().enqueue is not None)


def _text(name: str) -> str | None:
    value = flask.request.args.get(name, "").strip()
    return value[:FILTER_CHARS] or None


def _required(name: str) -> str:
    value = _text(name)
    if value is None:
        flask.abort(400, f"missing {name!r}")
    return value


def _int(name: str, default: int) -> int:
    try:
        return int(flask.request.args.get(name, default))
    except ValueError:
        return default

"""The dashboard's actions: every one a POST with the session's CSRF token (checked before any
of these runs, in ``web/app.py``), refused in read-only mode, answered with a redirect to the
page it came from and a message saying what was done.

Queues: pause, resume, purge (only from its confirmation page). Supervisors: quiet, stop.
Scheduled, retrying and dead jobs: run now, delete, kill, on one job or on the checked rows.
Periodic: enqueue a schedule's job now.
"""

from __future__ import annotations

from typing import Any

import flask

from jobrunner.backends.inspector import ACTIONS, PROCESS_SIGNALS
from jobrunner.web.common import KINDS, action_labels, backend_or_404, dashboard, local_path

#: The most job ids one bulk action takes.
MAX_IDS = 1000


def register(app: flask.Flask) -> None:
    app.add_url_rule("/<backend>/queues/action", "queue_action", queue_action,
                     methods=["POST"])
    app.add_url_rule("/<backend>/queues/purge", "purge", purge, methods=["POST"])
    app.add_url_rule("/<backend>/busy/signal", "signal", signal, methods=["POST"])
    app.add_url_rule("/<backend>/<any(scheduled, retries, dead):slug>/action", "job_action",
                     job_action, methods=["POST"])
    app.add_url_rule("/<backend>/periodic/enqueue", "enqueue_now", enqueue_now,
                     methods=["POST"])


def _back(default_endpoint: str, **values: Any):
    default = flask.url_for(default_endpoint, **values)[len(flask.request.script_root):]
    target = local_path(flask.request.form.get("next"), default)
    return flask.redirect(flask.request.script_root + target, 303)


def _field(name: str) -> str:
    value = flask.request.form.get(name, "").strip()
    if not value:
        flask.abort(400, f"missing form field {name!r}")
    return value


def queue_action(backend):
    backend_or_404(backend)
    queue, action = _field("queue"), _field("action")
    if action not in ("pause", "resume"):
        flask.abort(400)
    with dashboard().backends.inspector(backend) as inspector:
        result = inspector.queue_action(action, queue)
    flask.flash(f"{'paused' if result['paused'] else 'resumed'} queue {queue}; "
                "supervisors see it within 2 s", "ok")
    return _back("queues", backend=backend)


def purge(backend):
    backend_or_404(backend)
    queue = _field("queue")
    if flask.request.form.get("confirm") != "yes":
        return flask.redirect(flask.url_for("purge_confirm", backend=backend, queue=queue), 303)
    with dashboard().backends.inspector(backend) as inspector:
        result = inspector.queue_action("purge", queue)
    flask.flash(f"purged queue {queue}: {result['purged']} waiting job(s) deleted", "ok")
    return flask.redirect(flask.url_for("queues", backend=backend), 303)


def signal(backend):
    backend_or_404(backend)
    identity, action = _field("identity"), _field("action")
    if action not in PROCESS_SIGNALS:
        flask.abort(400)
    with dashboard().backends.inspector(backend) as inspector:
        sent = inspector.signal(identity, action)
    if sent:
        wish = "go quiet" if action == "quiet" else "stop"
        flask.flash(f"asked supervisor {identity} to {wish}; it sees it within about a "
                    "second", "ok")
    else:
        flask.flash(f"no live supervisor {identity}", "warn")
    return _back("busy", backend=backend)


def job_action(backend, slug):
    """``act`` is an action for the checked rows (``id`` fields), or ``ACTION|ID`` for one job
    (a job page's buttons); ``queue`` narrows a msg_id to one queue."""
    backend_or_404(backend)
    kind = KINDS[slug][0]
    action, _, one = _field("act").partition("|")
    if action not in ACTIONS[kind]:
        flask.abort(400)
    ids = [one] if one else [i for i in flask.request.form.getlist("id") if i][:MAX_IDS]
    label = action_labels(kind)[action].lower()
    if not ids:
        flask.flash(f"{label}: no job was checked", "warn")
        return _back("jobs", backend=backend, slug=slug)
    queue = flask.request.form.get("queue") or None
    with dashboard().backends.inspector(backend) as inspector:
        done, skipped, ambiguous = inspector.job_action(kind, action, ids=ids, queue=queue)
    _report(label, ids, done, skipped, ambiguous)
    return _back("jobs", backend=backend, slug=slug)


def _report(label, ids, done, skipped, ambiguous):
    matched = {str(e["id"]) for e in done + skipped} | \
              {str(e["msg_id"]) for e in done + skipped if e.get("msg_id") is not None}
    missing = [i for i in dict.fromkeys(ids) if i not in matched and i not in ambiguous]
    flask.flash(f"{label}: {len(done)} job(s) done", "ok" if done else "warn")
    for entry in skipped:
        flask.flash(f"skipped {entry['id'] or entry.get('msg_id')}: {entry['reason']}", "warn")
    if ambiguous:
        flask.flash("in several queues, pick one: " + ", ".join(ambiguous), "warn")
    if missing:
        flask.flash("not found (moved since the page was shown?): " + ", ".join(missing),
                    "warn")


def enqueue_now(backend):
    """Send the job of the schedule named by ``key`` now, with the worker, args and queue the
    backend stores for it (never args from the form): through the ``enqueue`` hook when the
    app has one, else through the backend itself."""
    backend_or_404(backend)
    key = _field("key")
    hook = dashboard().enqueue
    with dashboard().backends.inspector(backend) as inspector:
        schedule = inspector.stored_schedule(key)
        if schedule is None:
            flask.flash("that schedule is no longer stored", "warn")
            return _back("periodic", backend=backend)
        if hook is not None:
            job_id = hook(backend, schedule["worker"], schedule["args"])
        else:
            job_id = inspector.run_schedule(key)
    if job_id is None:
        flask.flash(f"{schedule['worker']} names no queue yet: its supervisor runs an older "
                    "version; restart it, or give make_app an enqueue hook", "warn")
    else:
        flask.flash(f"enqueued {schedule['worker']} now: job {job_id}", "ok")
    return _back("periodic", backend=backend)

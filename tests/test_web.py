"""The dashboard as a WSGI app under Flask's test client: pages, escaping, CSRF, auth,
read-only mode, actions, paging, mounts under a prefix, and `jobrunner web` itself.

Most tests run on the memory backend (an inspector over a ``MemoryStore``, no server); the
browser tests (``test_web_browser.py``) run the same pages on Postgres and Redis with a real
supervisor.
"""

import base64
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import flask
import pytest
from werkzeug.middleware.dispatcher import DispatcherMiddleware

import jobrunner
from jobrunner.backends.memory import MemoryBackend, MemoryEnqueuer, MemoryStore, StoreConsumer
from jobrunner.config import Settings
from jobrunner.job import ErrorInfo
from jobrunner.web import make_app
from jobrunner.web.charts import bar_chart, history_charts, per_hour

from helpers import CliProcess, tcp_sockets

EVIL = "<script>alert('x')</script>"
PAGES = ("/memory/", "/memory/queues", "/memory/busy", "/memory/scheduled", "/memory/retries",
         "/memory/dead", "/memory/periodic", "/memory/queues/purge?queue=mail")


class Mail(jobrunner.Worker):
    enqueuer = MemoryEnqueuer
    queue = "mail"

    def handle(self, args):
        pass


class Charge(Mail):
    queue = "billing"


class Board:
    """A dashboard over one memory store, with a test client."""

    def __init__(self, **options):
        self.store = MemoryStore()
        backend = MemoryBackend(Settings(), store=self.store)
        options.setdefault("basic_auth", "")
        self.app = make_app(inspectors={"memory": backend.inspector}, secret_key="t" * 32,
                            **options)
        self.client = self.app.test_client()

    def dead(self, args, error_class="ValueError", message="boom", backtrace=()):
        """A dead job with that error; returns its id."""
        [job_id] = Charge.enqueue_batch(self.store, [args])
        consumer = StoreConsumer(self.store, ["billing"], "c1")
        [job] = consumer.fetch(0)
        consumer.bury(job, ErrorInfo(error_class=error_class, message=message,
                                     backtrace=list(backtrace)))
        return job_id

    def token(self, path="/memory/"):
        page = self.client.get(path).get_data(as_text=True)
        return re.search(r'<meta name="csrf-token" content="([^"]+)">', page).group(1)

    def post(self, path, token=True, **form):
        if token is True:
            form["csrf_token"] = self.token()
        elif token:
            form["csrf_token"] = token
        return self.client.post(path, data=form)

    def text(self, path):
        response = self.client.get(path)
        assert response.status_code == 200, (path, response.status_code)
        return response.get_data(as_text=True)


@pytest.fixture
def board():
    return Board()


def test_every_page_answers_and_the_root_leads_to_the_first_backend(board):
    Mail.enqueue(board.store, {"n": 1})
    Mail.enqueue_in(board.store, 3600, {"n": 2})
    job_id = board.dead({"n": 3})
    for path in PAGES + (f"/memory/job?id={job_id}",):
        page = board.text(path)
        assert "<h1>" in page and "jobrunner" in page
    assert board.client.get("/").headers["Location"].endswith("/memory/")
    assert board.client.get("/nosuch/queues").status_code == 404
    assert "No job nope on memory" in board.text("/memory/job?id=nope")


def test_job_values_are_text_never_markup(board):
    job_id = board.dead({"html": EVIL, "img": "<img src=x onerror=alert(1)>"},
                        error_class="<b>Err</b>", message=EVIL,
                        backtrace=[f'  File "x.py", line 1, in {EVIL}'])
    for path in ("/memory/dead", f"/memory/job?id={job_id}", "/memory/overview"):
        page = board.client.get(path).get_data(as_text=True)
        assert "<script>alert" not in page and "<img src=x" not in page and "<b>Err" not in page
    page = board.text(f"/memory/job?id={job_id}")
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    assert "&lt;b&gt;Err&lt;/b&gt;" in page
    assert page.count("<script") == 1        # the dashboard's own script file, nothing else


def test_every_response_carries_the_security_headers(board):
    for path in ("/memory/", "/static/dashboard.js"):
        headers = board.client.get(path).headers
        assert headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert "unsafe-inline" not in headers["Content-Security-Policy"]
        assert headers["Referrer-Policy"] == "same-origin"
        assert headers["X-Content-Type-Options"] == "nosniff"
    cookie = board.app.test_client().get("/memory/queues").headers.get("Set-Cookie", "")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_a_post_without_the_csrf_token_or_with_another_is_403_and_changes_nothing(board):
    Mail.enqueue(board.store, {"n": 1})
    for token in (None, "", "x" * 43, Board().token()):
        refused = board.post("/memory/queues/action", token=token, queue="mail",
                             action="pause")
        assert refused.status_code == 403 and b"CSRF" in refused.data
    assert board.store.paused == set()
    done = board.post("/memory/queues/action", queue="mail", action="pause")
    assert done.status_code == 303 and board.store.paused == {"mail"}
    assert "paused queue mail" in board.text("/memory/queues")
    assert board.client.get("/memory/queues/action").status_code == 405    # no GET acts


def test_purge_deletes_only_from_its_confirmation_page(board):
    Mail.enqueue_batch(board.store, [{"n": n} for n in range(3)])
    asked = board.post("/memory/queues/purge", queue="mail")
    assert asked.status_code == 303 and "/memory/queues/purge?queue=mail" in asked.headers[
        "Location"]
    confirm = board.text("/memory/queues/purge?queue=mail")
    assert 'id="purge-count">3<' in confirm
    assert len(board.store.queues["mail"]) == 3
    done = board.post("/memory/queues/purge", queue="mail", confirm="yes")
    assert done.status_code == 303
    assert not board.store.queues.get("mail")
    assert "3 waiting job(s) deleted" in board.text("/memory/queues")


def test_job_actions_on_checked_rows_and_on_one_job(board):
    first, second, third = (board.dead({"n": n}) for n in range(3))
    listing = board.text("/memory/dead")
    assert all(f'value="{i}"' in listing for i in (first, second, third))
    done = board.post("/memory/dead/action", act="run", id=[first, second],
                      next="/memory/dead?page=1")
    assert done.status_code == 303 and done.headers["Location"].endswith("/memory/dead?page=1")
    assert "retry now: 2 job(s) done" in board.text("/memory/dead")
    assert [e["id"] for e in board.app.extensions["jobrunner"].backends.by_name[
        "memory"].opener().jobs("dead")] == [third]
    board.post("/memory/dead/action", act=f"delete|{third}")
    assert "No dead job." in board.text("/memory/dead")
    gone = board.post("/memory/dead/action", act=f"run|{third}")
    assert gone.status_code == 303 and "not found" in board.text("/memory/dead")
    assert board.post("/memory/dead/action", act="kill", id=[first]).status_code == 400
    # an offsite "next" is not followed
    away = board.post("/memory/dead/action", act="run", id=[first], next="//evil.example/")
    assert away.headers["Location"].endswith("/memory/dead")


def test_lists_page_in_the_backend_and_filter(board):
    Mail.enqueue_batch(board.store, [])
    for n in range(60):
        Mail.enqueue_in(board.store, 600 + n, {"n": n})
    first = board.text("/memory/scheduled")
    assert first.count('name="id"') == 25 and 'rel="next"' in first and 'rel="prev"' not in first
    last = board.text("/memory/scheduled?page=3")
    assert last.count('name="id"') == 10 and 'rel="next"' not in last
    assert "Jobs 51–60" in last
    assert "No more jobs." in board.text("/memory/scheduled?page=9")
    assert "matches the filter" in board.text("/memory/scheduled?worker=Nobody")
    board.dead({"n": 1}, message="card declined")
    board.dead({"n": 2}, message="timeout")
    assert board.text("/memory/dead?error=DECLINED").count('name="id"') == 1


def test_read_only_shows_no_button_and_refuses_every_post():
    board = Board(read_only=True)
    job_id = board.dead({"n": 1})
    for path in PAGES + (f"/memory/job?id={job_id}",):
        page = board.text(path)
        assert 'method="post"' not in page and "csrf" not in page
        assert "<button" not in page.replace('<button type="submit">Filter</button>', "")
    for path in ("/memory/queues/action", "/memory/dead/action", "/memory/busy/signal"):
        assert board.client.post(path, data={"csrf_token": "x"}).status_code == 403


def test_basic_auth_guards_every_page_and_file():
    board = Board(basic_auth="ops:s3cret:with-colon")
    good = "Basic " + base64.b64encode(b"ops:s3cret:with-colon").decode()
    for path in PAGES + ("/", "/static/dashboard.css"):
        for header in (None, "Basic " + base64.b64encode(b"ops:wrong").decode(),
                       "Basic !!notbase64", "Bearer x"):
            refused = board.client.get(path, headers={"Authorization": header} if header else {})
            assert refused.status_code == 401, (path, header)
            assert refused.headers["WWW-Authenticate"].startswith('Basic realm="jobrunner"')
        assert board.client.get(path, headers={"Authorization": good}).status_code in (200, 302)
    with pytest.raises(ValueError):
        Board(basic_auth="no-colon")


def test_the_authorize_hook_sees_the_environ_and_can_refuse():
    seen = []

    def authorize(environ):
        seen.append(environ["PATH_INFO"])
        return environ.get("HTTP_X_STAFF") == "yes"

    board = Board(authorize=authorize)
    assert board.client.get("/memory/queues").status_code == 403
    assert board.client.get("/memory/queues", headers={"X-Staff": "yes"}).status_code == 200
    assert seen == ["/memory/queues", "/memory/queues"]


def test_mounted_in_a_flask_project_under_a_prefix_with_its_login():
    """The example of docs/dashboard.md: the project's own session decides who may enter."""
    site = flask.Flask("site")
    site.secret_key = "site-secret"

    @site.post("/login")
    def login():
        flask.session["staff"] = True
        return "in"

    def staff_only(environ):
        with site.request_context(environ):
            return bool(flask.session.get("staff"))

    store = MemoryStore()
    dashboard = make_app(inspectors={"memory": MemoryBackend(Settings(), store=store).inspector},
                         authorize=staff_only, basic_auth="")
    site.wsgi_app = DispatcherMiddleware(site.wsgi_app, {"/admin/jobs": dashboard})
    client = site.test_client()
    assert client.get("/admin/jobs/memory/queues").status_code == 403
    client.post("/login")
    assert client.get("/admin/jobs/").headers["Location"].endswith("/admin/jobs/memory/")
    Mail.enqueue(store, {"n": 1})
    page = client.get("/admin/jobs/memory/queues").get_data(as_text=True)
    assert 'href="/admin/jobs/static/dashboard.css"' in page
    assert 'action="/admin/jobs/memory/queues/action"' in page
    assert 'href="/admin/jobs/memory/dead"' in page
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    done = client.post("/admin/jobs/memory/queues/action",
                       data={"csrf_token": token, "queue": "mail", "action": "pause",
                             "next": "/memory/queues"})
    assert done.status_code == 303 and done.headers["Location"] == "/admin/jobs/memory/queues"
    assert store.paused == {"mail"}


def test_any_wsgi_prefix_works_through_script_name(board):
    page = board.client.get("/memory/dead", base_url="http://localhost/ops/jobs")
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and 'href="/ops/jobs/memory/queues"' in text
    assert 'src="/ops/jobs/static/dashboard.js"' in text


def test_enqueue_now_sends_the_stored_args_through_the_hook():
    sent = []
    board = Board(enqueue=lambda backend, worker, args: sent.append((backend, worker, args))
                  or "job-1")
    board.store.refresh_schedules({"k": {"worker": "Mail", "cron": "0 0 1 1 *",
                                         "args": {"n": EVIL}, "timezone": "UTC"}}, 0.0)
    page = board.text("/memory/periodic")
    assert "Enqueue now" in page and "&lt;script&gt;" in page
    done = board.post("/memory/periodic/enqueue", key="k", args="ignored")
    assert done.status_code == 303 and sent == [("memory", "Mail", {"n": EVIL})]
    assert "enqueued Mail now: job job-1" in board.text("/memory/periodic")


def test_enqueue_now_without_a_hook_sends_the_stored_job_to_its_stored_queue():
    board = Board()
    board.store.refresh_schedules({"k": {"worker": "Mail", "cron": "0 0 1 1 *",
                                         "args": {"n": 7}, "timezone": "UTC",
                                         "queue": "mail"}}, 0.0)
    assert "Enqueue now" in board.text("/memory/periodic")
    assert board.post("/memory/periodic/enqueue", key="k").status_code == 303
    [message] = board.store.queues["mail"]
    assert '"worker_name":"Mail"' in message.body and '"args":{"n":7}' in message.body
    assert "enqueued Mail now: job " in board.text("/memory/periodic")


def test_enqueue_now_has_no_button_for_a_schedule_stored_without_its_queue():
    board = Board()
    board.store.refresh_schedules({"k": {"worker": "Mail", "cron": "0 0 1 1 *",
                                         "args": {}, "timezone": "UTC"}}, 0.0)
    assert "Enqueue now" not in board.text("/memory/periodic")
    assert board.post("/memory/periodic/enqueue", key="k").status_code == 303
    assert "names no queue yet" in board.text("/memory/periodic")
    assert not board.store.queues.get("default")


def test_charts_are_bars_of_processed_and_a_line_of_failed():
    start = 1_800_000_000 // 3600 * 3600
    history = [{"minute": start + 60 * i, "processed": i % 7, "failed": i % 2}
               for i in range(1440)]
    minute_chart, hour_chart = history_charts(history)
    assert len(minute_chart["bars"]) == 60 and len(hour_chart["bars"]) == 24
    assert minute_chart["processed"] == sum(e["processed"] for e in history[-60:])
    assert [b["processed"] for b in per_hour(history)] == [
        sum(e["processed"] for e in history[h * 60:(h + 1) * 60]) for h in range(24)]
    tallest = max(minute_chart["bars"], key=lambda b: b["h"])
    assert tallest["y"] + tallest["h"] == minute_chart["bottom"]
    assert len(minute_chart["line"].split()) == 60
    assert history_charts([]) == []
    flat = bar_chart([{"at": start, "processed": 0, "failed": 0}], 1, "%H", "t")
    assert [t["label"] for t in flat["ticks"]] == ["0", "1"]


# -- `jobrunner web` ----------------------------------------------------------------------------

def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _status(url, headers=None, data=None):
    request = urllib.request.Request(url, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.mark.slow
def test_the_web_command_serves_both_backends_on_loopback(tmp_path, pg_dsn, redis_url):
    port = _free_port()
    env = {"JOBRUNNER_PG_DSN": pg_dsn, "JOBRUNNER_REDIS_URL": redis_url,
           "JOBRUNNER_WEB_BASIC_AUTH": "ops:pw"}
    server = CliProcess(["web", "--port", str(port), "--read-only"], env,
                        str(tmp_path / "web.log"))
    try:
        server.wait_for_log(f"serving the dashboard on http://127.0.0.1:{port}/ (read-only)")
        base = f"http://127.0.0.1:{port}"
        assert _status(base + "/pgmq/")[0] == 401
        auth = {"Authorization": "Basic " + base64.b64encode(b"ops:pw").decode()}
        for backend in ("pgmq", "sidekiq"):
            status, page = _status(f"{base}/{backend}/queues", auth)
            assert status == 200 and 'method="post"' not in page
        assert _status(base + "/pgmq/queues/action", auth, data=b"queue=q")[0] == 403
        listening = [s for s in tcp_sockets(server.pid) if s[0] == "0A"]
        assert [(s[1], s[2]) for s in listening] == [("127.0.0.1", port)]
    finally:
        server.stop()


def test_the_web_command_refuses_a_basic_auth_without_a_colon():
    done = subprocess.run([sys.executable, "-m", "jobrunner", "web", "--basic-auth", "nocolon",
                           "--port", "0"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "USER:PASS" in done.stderr

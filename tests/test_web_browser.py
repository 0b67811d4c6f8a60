"""The dashboard in a real browser (Debian's chromium, headless, driven by Selenium through the
system chromedriver) against real Postgres and Redis, with a real supervisor running.

One browser, one dashboard server (in this process, on a free port) and one supervisor
(``apps/web_app.py``: one child per backend, serving the module's queue and ``<queue>_other``
in that order) serve the whole module; the quiet/stop test starts a supervisor of its own, since
it ends it. Every wait is on a condition (``wait_for``, or the page after a reload); each test
saves screenshots under its ``tmp_path``.
"""

import os
import shutil
import threading
import time
import urllib.error
import urllib.request
import uuid

import psycopg2
import pytest
import redis
from werkzeug.serving import WSGIRequestHandler, make_server

from apps import web_app
from conftest import _with_db
from helpers import wait_for
from jobrunner.backends.paused import PAUSE_CHECK_SECONDS
from jobrunner.web import make_app
from supervisor_support import Supervised

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import NoAlertPresentException, WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
BACKENDS = ("pgmq", "sidekiq")
PREFIX = {"pgmq": "Pg", "sidekiq": "Redis"}
#: Every page of a backend: path after /<backend>/, and its heading.
PAGES = (("", "Overview"), ("queues", "Queues"), ("busy", "Busy"), ("scheduled", "Scheduled"),
         ("retries", "Retries"), ("dead", "Dead"), ("periodic", "Periodic"))
EVIL = "<script>alert('pwned')</script>"


class Quiet(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):
        pass


class Server:
    """A dashboard app served on a free loopback port from a thread of this process."""

    def __init__(self, app):
        self.httpd = make_server("127.0.0.1", 0, app, threaded=True, request_handler=Quiet)
        self.base = f"http://127.0.0.1:{self.httpd.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class Site:
    """The module's queues, connections, supervisor, dashboard and browser."""

    def __init__(self, pg_dsn, redis_url, directory):
        self.queue = "w_" + uuid.uuid4().hex[:10]
        self.other = self.queue + "_other"
        self.dir = directory
        self.env = {"JOBRUNNER_PG_DSN": pg_dsn, "JOBRUNNER_REDIS_URL": redis_url,
                    "TEST_QUEUE": self.queue}
        self.pg = psycopg2.connect(pg_dsn)
        self.pg.autocommit = True
        self.redis = redis.Redis.from_url(redis_url)
        self.redis.flushdb()
        # No enqueue hook: "Enqueue now" goes through the backend, as in plain `jobrunner web`.
        self.app = make_app({"pg_dsn": pg_dsn, "redis_url": redis_url}, basic_auth="")
        self.server = Server(self.app)
        self.supervisors = []

    def worker(self, backend, name):
        """The app's worker ``name`` (Charge, Record, Hold, RecordOther) on ``backend``, sent to
        the queue the supervisor serves (this process imported the app without TEST_QUEUE)."""
        worker = web_app.made[PREFIX[backend] + name]
        queue = self.other if name == "RecordOther" else self.queue
        return type(worker.__name__, (worker,), {"name": worker.name, "queue": queue})

    def conn(self, backend):
        return self.pg if backend == "pgmq" else self.redis

    def enqueue(self, backend, name, *args_list, delay=None):
        worker = self.worker(backend, name)
        if delay:
            return [worker.enqueue_in(self.conn(backend), delay, a) for a in args_list]
        return worker.enqueue_batch(self.conn(backend), list(args_list))

    def supervise(self, name):
        sv = Supervised(self.dir, "web_app", ["--processes", "1"], self.env, name=name)
        self.supervisors.append(sv)
        return sv

    def url(self, backend, path=""):
        return f"{self.server.base}/{backend}/{path}"

    def resume_all(self):
        with self.pg.cursor() as cur:
            cur.execute("DELETE FROM jobrunner.paused_queues WHERE queue IN (%s, %s)",
                        (self.queue, self.other))
        self.redis.srem("jobrunner:paused", self.queue, self.other)

    def close(self):
        self.server.close()
        self.app.extensions["jobrunner"].backends.close()
        left = {sv.pid: sv.close() for sv in self.supervisors}
        with self.pg.cursor() as cur:
            cur.execute("SELECT pgmq.drop_queue(queue_name) FROM pgmq.list_queues() "
                        "WHERE queue_name IN (%s, %s)", (self.queue, self.other))
        self.resume_all()
        self.pg.close()
        self.redis.flushdb()
        self.redis.close()
        assert not any(left.values()), f"processes left behind: {left}"


@pytest.fixture(scope="module")
def site(pg_dsn, redis_server_url, tmp_path_factory):
    made = Site(pg_dsn, _with_db(redis_server_url,
                                 int(os.environ.get("JOBRUNNER_TEST_REDIS_DB", "0"))),
                tmp_path_factory.mktemp("web"))
    try:
        made.sv = made.supervise("sv")
        # One job on each queue of each backend: both queues exist (and are listed) from now
        # on, and the supervisor is up.
        for n, backend in enumerate(BACKENDS):
            made.enqueue(backend, "Record", {"n": n})
            made.enqueue(backend, "RecordOther", {"n": 10 + n})
        made.sv.wait_lines("ran", 4, timeout=30)
        yield made
    finally:
        made.close()


@pytest.fixture(scope="module")
def browser():
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install -y "
                    "chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def shot(browser, tmp_path, name):
    browser.save_screenshot(str(tmp_path / f"{name}.png"))


def text(browser, css="body"):
    return browser.find_element(By.CSS_SELECTOR, css).text


def click(browser, css, within=None):
    """Click what ``css`` finds (in ``within``, else the page) and wait for the next page."""
    page = browser.find_element(By.TAG_NAME, "html")
    (within or browser).find_element(By.CSS_SELECTOR, css).click()
    WebDriverWait(browser, 10).until(lambda _: gone(page))


def gone(element):
    """True once ``element``'s page was replaced. Chromium reports a node of a replaced page
    either as stale or, while the new page loads, as not belonging to the document."""
    try:
        element.is_enabled()
    except WebDriverException:           # StaleElementReferenceException is one of these
        return True
    return False


def until_page(browser, url, condition, timeout=15.0, message="the page"):
    """Load ``url`` again until ``condition(browser)`` holds (what auto-refresh would show)."""
    def check():
        browser.get(url)
        return condition(browser)
    return wait_for(check, timeout, interval=0.2, message=message)


def flash(browser):
    return " ".join(e.text for e in browser.find_elements(By.CSS_SELECTOR, ".flash"))


# -- every page ---------------------------------------------------------------------------------

def test_every_page_opens_on_both_backends(site, browser, tmp_path):
    for backend in BACKENDS:
        for path, heading in PAGES:
            browser.get(site.url(backend, path))
            assert text(browser, "h1") == f"{heading} {backend}", browser.current_url
            # no error page (error.html); the lists' error cells hold other tests' dead jobs
            assert not browser.find_elements(By.CSS_SELECTOR, "main > p.error"), text(browser)
        # the switcher leads to the same page on the other backend
        other = BACKENDS[1 - BACKENDS.index(backend)]
        click(browser, f'.backends a[href$="/{other}/periodic"]')
        assert text(browser, "h1") == f"Periodic {other}"
        # The pgmq database is shared by the whole test run, where other tests' supervisors
        # come and go: the count covers at least this module's supervisor's child.
        until_page(browser, site.url(backend),
                   lambda b: int(text(b, "#busy-children").split(" of ")[1]) >= 1,
                   message="the supervisor's child in the overview")
        until_page(browser, site.url(backend, "busy"), lambda b: str(site.sv.pid) in text(b),
                   message="the supervisor on the Busy page")
        assert site.queue in text(browser, "main")
        shot(browser, tmp_path, f"overview-{backend}")
        browser.get(site.url(backend, "queues"))
        rows = text(browser, "#queues")
        assert site.queue in rows and site.other in rows
        shot(browser, tmp_path, f"queues-{backend}")
        until_page(browser, site.url(backend, "periodic"),
                   lambda b: f"{PREFIX[backend]}Record" in text(b, "main"),
                   message="the schedule on the Periodic page")
        shot(browser, tmp_path, f"periodic-{backend}")


# -- jobs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_a_killed_job_retried_from_the_dead_page_runs(site, browser, tmp_path, backend):
    n = 100 + BACKENDS.index(backend)
    [job_id] = site.enqueue(backend, "Record", {"n": n}, delay=3600)
    browser.get(site.url(backend, "scheduled"))
    browser.find_element(By.CSS_SELECTOR, f'#jobs input[value="{job_id}"]').click()
    click(browser, '#bulk button[value="kill"]')
    assert "kill: 1 job(s) done" in flash(browser)
    browser.get(site.url(backend, "dead"))
    click(browser, f'#jobs a[href$="id={job_id}"]')
    assert browser.find_element(By.CSS_SELECTOR, "section.job").get_attribute(
        "data-state") == "dead"
    assert "jobrunner.Killed" in text(browser, "#error")
    shot(browser, tmp_path, "dead-job")
    click(browser, 'button[value^="run|"]')
    assert "retry now: 1 job(s) done" in flash(browser)
    wait_for(lambda: n in site.sv.ran(), message=f"job {n} to run")
    until_page(browser, site.url(backend, f"job?id={job_id}"),
               lambda b: b.find_elements(By.ID, "not-found"), message="the job done and gone")
    shot(browser, tmp_path, "after-retry")


@pytest.mark.parametrize("backend", BACKENDS)
def test_script_in_args_and_error_is_shown_as_text(site, browser, tmp_path, backend):
    n = 300 + BACKENDS.index(backend)
    [job_id] = site.enqueue(backend, "Charge", {"n": n, "card": EVIL})
    wait_for(lambda: n in site.sv.ran("charge"), message="the charge to fail")
    until_page(browser, site.url(backend, "retries"),
               lambda b: b.find_elements(By.CSS_SELECTOR, f'#jobs a[href$="id={job_id}"]'),
               message="the failed job in the retries")
    assert f"ValueError: card {EVIL} declined" in text(browser, "#jobs")
    click(browser, f'#jobs a[href$="id={job_id}"]')
    assert EVIL in text(browser, "#args")
    assert text(browser, "#error") == f"ValueError: card {EVIL} declined"
    assert "in charge_card" in text(browser, "#backtrace")
    scripts = browser.find_elements(By.TAG_NAME, "script")
    assert [s.get_attribute("src").rsplit("/", 1)[-1] for s in scripts] == ["dashboard.js"]
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text
    shot(browser, tmp_path, "script-as-text")
    click(browser, 'button[value^="delete|"]')
    assert "delete: 1 job(s) done" in flash(browser)
    assert browser.find_elements(By.ID, "not-found")


@pytest.mark.parametrize("backend", BACKENDS)
def test_enqueue_now_runs_the_periodic_job(site, browser, tmp_path, backend):
    args = web_app.SCHEDULED_ARGS[backend]
    until_page(browser, site.url(backend, "periodic"),
               lambda b: f"{PREFIX[backend]}Record" in text(b, "#schedules"),
               message="the schedule on the Periodic page")
    row = [r for r in browser.find_elements(By.CSS_SELECTOR, "#schedules tbody tr")
           if r.text.startswith(f"{PREFIX[backend]}Record")][0]
    assert "never" in row.text
    click(browser, "button", within=row)
    assert f"enqueued {PREFIX[backend]}Record now" in flash(browser)
    wait_for(lambda: args["n"] in site.sv.ran(), message="the schedule's job to run")
    shot(browser, tmp_path, "enqueued-now")


# -- queues ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_a_paused_queue_waits_while_another_drains(site, browser, tmp_path, backend):
    base = 200 + 20 * BACKENDS.index(backend)
    try:
        browser.get(site.url(backend, "queues"))
        click(browser, f'tr[data-queue="{site.queue}"] button')
        paused_at = time.monotonic()
        assert f"paused queue {site.queue}" in flash(browser)
        assert text(browser, f'tr[data-queue="{site.queue}"] .state') == "paused"
        # Every child reads the paused queues at most every PAUSE_CHECK_SECONDS (2 s, as
        # documented); after that none starts the queue's jobs.
        wait_for(lambda: time.monotonic() - paused_at > PAUSE_CHECK_SECONDS + 0.2,
                 timeout=5, message="the documented pause interval")
        site.enqueue(backend, "Record", *[{"n": base + i} for i in range(3)])
        site.enqueue(backend, "RecordOther", *[{"n": base + 10 + i} for i in range(3)])
        # The child takes its queues in order: unpaused, the first queue's jobs would run first.
        wait_for(lambda: all(base + 10 + i in site.sv.ran() for i in range(3)),
                 message="the other queue to drain")
        assert not [i for i in range(3) if base + i in site.sv.ran()]
        browser.get(site.url(backend, "queues"))
        assert text(browser, f'tr[data-queue="{site.queue}"] .waiting') == "3"
        shot(browser, tmp_path, "paused")
        click(browser, f'tr[data-queue="{site.queue}"] button')
        assert f"resumed queue {site.queue}" in flash(browser)
        wait_for(lambda: all(base + i in site.sv.ran() for i in range(3)),
                 message="the resumed queue to drain")
    finally:
        site.resume_all()


def test_a_post_without_the_csrf_token_gets_403(site, browser, tmp_path):
    browser.get(site.url("sidekiq", "queues"))
    form = f'tr[data-queue="{site.queue}"] form'
    browser.execute_script("document.querySelector(arguments[0]).remove()",
                           f'{form} input[name="csrf_token"]')
    click(browser, f"{form} button")
    assert "missing or wrong CSRF token" in text(browser)
    shot(browser, tmp_path, "csrf-403")
    request = urllib.request.Request(site.url("pgmq", "queues/action"), method="POST",
                                     data=f"queue={site.queue}&action=pause".encode())
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403
    assert site.redis.smembers("jobrunner:paused") == set()
    with site.pg.cursor() as cur:
        cur.execute("SELECT count(*) FROM jobrunner.paused_queues WHERE queue = %s",
                    (site.queue,))
        assert cur.fetchone()[0] == 0


def test_with_basic_auth_no_page_opens_without_it(site, browser, tmp_path):
    guarded = Server(make_app(dict(pg_dsn=site.env["JOBRUNNER_PG_DSN"],
                                   redis_url=site.env["JOBRUNNER_REDIS_URL"]),
                              basic_auth="ops:open sesame"))
    try:
        for backend in BACKENDS:
            for path, _ in PAGES:
                url = f"{guarded.base}/{backend}/{path}"
                with pytest.raises(urllib.error.HTTPError) as refused:
                    urllib.request.urlopen(url, timeout=10)
                assert refused.value.code == 401, url
        browser.get(f"{guarded.base}/pgmq/dead")
        assert not browser.find_elements(By.TAG_NAME, "h1")
        shot(browser, tmp_path, "no-credentials")
        browser.get(guarded.base.replace("//", "//ops:open%20sesame@") + "/pgmq/dead")
        assert text(browser, "h1") == "Dead pgmq"
        shot(browser, tmp_path, "with-credentials")
    finally:
        guarded.close()


# -- supervisors ----------------------------------------------------------------------------------

def test_quiet_and_stop_buttons_reach_the_supervisor(site, browser, tmp_path):
    sv = site.supervise("quiet")
    row = f'tr[data-identity*=":{sv.pid}:"]'
    until_page(browser, site.url("pgmq", "busy"), lambda b: b.find_elements(By.CSS_SELECTOR, row),
               message="the new supervisor on the Busy page")
    assert text(browser, f"{row} .state") == "running"
    click(browser, f'{row} button')        # the first button: Quiet
    assert "to go quiet" in flash(browser)
    sv.wait_log("quiet; no new jobs will start")
    for backend in BACKENDS:
        until_page(browser, site.url(backend, "busy"),
                   lambda b: text(b, f"{row} .state") == "quiet",
                   message=f"quiet shown on {backend}")
    assert not browser.find_elements(By.CSS_SELECTOR, f'{row} button[type="submit"]')[1:]
    shot(browser, tmp_path, "quiet")
    click(browser, f"{row} button")        # only Stop is left
    assert "to stop" in flash(browser)
    assert sv.wait_exit() == 0
    until_page(browser, site.url("sidekiq", "busy"),
               lambda b: not b.find_elements(By.CSS_SELECTOR, row),
               message="the stopped supervisor gone from the Busy page")
    shot(browser, tmp_path, "stopped")

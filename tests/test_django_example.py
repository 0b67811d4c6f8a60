"""examples/django_app's own tests, run by Django's test runner with a real `manage.py
jobrunner`, in the venvs examples/django_app/venvs.py makes (once; .ci/run makes them before
the tests): Django 6 on Python 3.12 with psycopg 3, Django 5.2 with the django-tasks backport
on Python 3.11 with psycopg2. Both run in this session's Postgres database and Redis."""

import contextlib
import importlib.util
import os
import re
import signal
import subprocess

import pytest

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "examples", "django_app")

pytestmark = pytest.mark.slow


def _venvs():
    spec = importlib.util.spec_from_file_location("django_example_venvs",
                                                  os.path.join(EXAMPLE, "venvs.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(900)          # a venv not made yet is made first, which takes a minute
@pytest.mark.parametrize("venv, skipped", [("django6", 0), ("django52", 1)])  # psycopg 3's own
def test_the_django_example_passes_its_own_tests(venv, skipped, pg_dsn, redis_url, tmp_path):
    venvs = _venvs()
    python = venvs.ensure(venv)
    pidfile = tmp_path / "supervisor.pid"
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("JOBRUNNER_", "DJANGO_", "PYTHON"))}
    env.update(DATABASE_URL=pg_dsn, REDIS_URL=redis_url, JOBRUNNER_REDIS_URL=redis_url,
               EXAMPLE_TESTS_IN_DATABASE="1", EXAMPLE_EXPECT_DRIVER=venvs.SPECS[venv]["driver"],
               EXAMPLE_SUPERVISOR_PIDFILE=str(pidfile))
    try:
        run = subprocess.run([python, "manage.py", "test", "--keepdb", "--noinput", "-v", "2"],
                             cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=300)
    finally:
        if pidfile.exists():         # the tests stop it; this is for a run that crashed
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pidfile.read_text()), signal.SIGKILL)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-8000:]
    ran = re.search(r"^Ran (\d+) tests? in", output, re.M)
    assert ran and int(ran.group(1)) >= 26, output[-3000:]
    verdict = "OK" if not skipped else f"OK (skipped={skipped})"
    assert re.search(rf"^{re.escape(verdict)}$", output, re.M), output[-3000:]

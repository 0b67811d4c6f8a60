"""What the example's tests share: a real `manage.py jobrunner`, waits with a deadline, and a
second database session that sees only what was committed."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from django.conf import settings
from django.db import connections

BASE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def wait_for(condition, timeout=20.0, message="condition"):
    """Poll ``condition`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(0.05)


@contextlib.contextmanager
def other_session():
    """A cursor on a connection of its own: it sees committed rows only."""
    observer = connections.create_connection("default")
    try:
        with observer.cursor() as cursor:
            yield cursor
    finally:
        observer.close()


def committed(sql, *params):
    """The rows ``sql`` finds in what is committed, JSON values decoded."""
    with other_session() as cursor:
        cursor.execute(sql, params)
        return [tuple(_decoded(value) for value in row) for row in cursor.fetchall()]


def execute(sql):
    """Run ``sql`` in a session of its own, committed at once."""
    with other_session() as cursor:
        cursor.execute(sql)


def _decoded(value):
    # Django has both drivers hand jsonb over as text, which its JSONField decodes
    return json.loads(value) if isinstance(value, str) and value[:1] in '"[{' else value


def drop_queue(name):
    execute(f"SELECT pgmq.drop_queue(queue_name) FROM pgmq.list_queues() "
            f"WHERE queue_name = '{name}'")


class Supervisor:
    """`python manage.py jobrunner signups.jobs:registry` in a process group of its own."""

    def __init__(self):
        self.log = tempfile.NamedTemporaryFile("w+", prefix="jobrunner-", suffix=".log")
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "jobrunner", "signups.jobs:registry",
             "--processes", "1", "--shutdown-timeout", "5"],
            cwd=BASE_DIR, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            env=dict(os.environ, DJANGO_SETTINGS_MODULE=settings.SETTINGS_MODULE))
        pidfile = os.environ.get("EXAMPLE_SUPERVISOR_PIDFILE")
        if pidfile:                  # for whoever ran these tests to clean up after a crash
            with open(pidfile, "w") as handle:
                handle.write(str(self.proc.pid))

    def output(self):
        self.log.flush()
        with open(self.log.name) as handle:
            return handle.read()

    def stop(self):
        """TERM, as a deploy would; the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.log.close()

"""``scripts/scale.py`` in its short form: it runs on both backends and prints every figure."""

import os
import re
import subprocess
import sys

import pytest

from helpers import PrivatePostgres

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = ["--jobs", "20000", "--deep-sample", "5000", "--shallow", "5000", "--queue-jobs",
         "5000", "--queues", "5", "--idle-supervisors", "1", "--idle-seconds", "2"]
FIGURES = ["enqueue jobs/s", "deep jobs/s", "shallow jobs/s", "one queue jobs/s",
           "many queues jobs/s", "idle round trips/s per child", "idle CPU ms/s per child"]


@pytest.mark.slow
def test_the_scale_script_prints_every_figure_for_both_backends():
    if not PrivatePostgres.available():
        (pytest.fail if os.environ.get("CI") else pytest.skip)("a private Postgres needs root")
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "scale.py"), *SHORT],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout.split("\nsummary\n", 1)[1]
    values = dict(re.findall(r"^(\S.*?)\s{2,}(-?[\d,.]+)$", summary, re.MULTILINE))
    for backend in ("pgmq", "sidekiq"):
        for figure in FIGURES:
            value = float(values[f"{backend} {figure}"].replace(",", ""))
            # Idle figures are differences of two short windows: in the short form, noise.
            assert value > 0 or "idle" in figure, (backend, figure, summary)
    for name in ("pgmq queue table MB after the backlog", "pgmq second deep jobs/s",
                 "sidekiq bytes per waiting job"):
        assert float(values[name].replace(",", "")) > 0, (name, summary)
    for goal in ("drain at depth vs a shallow queue", "many queues vs one queue", "idle child"):
        assert summary.count(goal) == 2, (goal, summary)

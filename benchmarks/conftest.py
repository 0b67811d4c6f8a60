"""Benchmark fixtures: the test suite's servers, plus a running supervisor per case."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.dirname(os.path.abspath(__file__))]

from tests.conftest import pg_conn, pg_dsn, queue_name, redis_conn, redis_server_url, redis_url  # noqa: E402,F401

#: Jobs drained per round; JOBRUNNER_BENCH_JOBS overrides (CI's smoke pass uses few).
JOBS = int(os.environ.get("JOBRUNNER_BENCH_JOBS", "5000"))

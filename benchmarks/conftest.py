"""Benchmark fixtures: the test suite's servers, plus a running supervisor per case."""

import os
import sys

import psycopg2
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.dirname(os.path.abspath(__file__))]

from tests.conftest import pg_conn, pg_dsn, queue_name, redis_conn, redis_server_url, redis_url, pg_server_dsn  # noqa: E402,F401

#: Jobs drained per round; JOBRUNNER_BENCH_JOBS overrides (CI's smoke pass uses few).
JOBS = int(os.environ.get("JOBRUNNER_BENCH_JOBS", "5000"))


@pytest.fixture
def pgmq_queue(pg_dsn):
    """A connection to the benchmark's database, where the empty pgmq queue ``bench`` exists."""
    conn = psycopg2.connect(pg_dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT pgmq.create('bench'); SELECT pgmq.purge_queue('bench')")
    conn.commit()
    yield conn
    conn.close()


def pytest_terminal_summary(terminalreporter, config):
    """Print jobs/s (or latency, RSS) per case with its ratios to its group's yardsticks."""
    session = getattr(config, "_benchmarksession", None)
    if session is None or session.disabled or not session.benchmarks:
        return
    from report import format_table
    benchmarks = [b.as_dict(include_data=False) for b in session.benchmarks if b.has_error is False]
    terminalreporter.write_sep("-", "jobrunner vs yardsticks (median; ratio: case / yardstick)")
    terminalreporter.write_line(format_table(benchmarks))

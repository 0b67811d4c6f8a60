"""Ruby Sidekiq 6.4 draining the one-INCR jobs, in the Redis one-INCR group of ``test_drain``."""

import os
import shutil
import signal
import subprocess
import tempfile

import pytest

from bench_app import COUNTER, QUEUE, RedisIncr
from conftest import JOBS
from runner import describe, drain_group, redis_round, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
SERVERS = 2
THREADS = 10


@pytest.fixture
def sidekiq_servers(redis_url, redis_conn):
    """2 ``sidekiq`` processes x 10 threads on the benchmark's Redis, logging at their default
    level (INFO: start and done lines per job) to a file; up once both have sent a heartbeat."""
    if not shutil.which("sidekiq"):
        pytest.skip("Ruby Sidekiq (the `sidekiq` command) is not installed")
    log_dir = tempfile.mkdtemp(prefix="jobrunner-bench-sidekiq-")
    env = dict(os.environ, REDIS_URL=redis_url, BENCH_COUNTER=COUNTER)
    servers = []
    try:
        for number in range(SERVERS):
            with open(os.path.join(log_dir, f"sidekiq{number}.log"), "w") as log:
                servers.append(subprocess.Popen(
                    ["sidekiq", "-r", os.path.join(HERE, "bench_jobs.rb"), "-q", QUEUE,
                     "-c", str(THREADS), "-t", "5"],
                    env=env, stdout=log, stderr=subprocess.STDOUT, cwd=log_dir))
        wait_until(lambda: redis_conn.scard("processes") >= SERVERS
                   or any(server.poll() is not None for server in servers), timeout=60)
        assert all(server.poll() is None for server in servers), _logs(log_dir, tail=2000)
        yield servers
    finally:
        for server in servers:
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
        codes = [server.wait(20) for server in servers]
        logs = _logs(log_dir, tail=2000)
        done_lines = _logs(log_dir).count("INFO: done")
        shutil.rmtree(log_dir, ignore_errors=True)
    assert codes == [0] * SERVERS, logs
    assert done_lines >= JOBS, f"Sidekiq logged {done_lines} per-job done lines:\n{logs}"


def _logs(log_dir, tail=None):
    """The servers' logs (each one's last ``tail`` characters when given)."""
    texts = []
    for name in sorted(os.listdir(log_dir)):
        with open(os.path.join(log_dir, name)) as log:
            texts.append(log.read()[-tail if tail else 0:])
    return "\n".join(texts)


def test_drain_redis_ruby_sidekiq(benchmark, redis_conn, sidekiq_servers):
    describe(benchmark, drain_group(JOBS, "one-INCR", "redis", 2), JOBS, yardstick="sidekiq")
    benchmark.extra_info["servers"] = f"{SERVERS} x {THREADS} threads"
    redis_round(benchmark, redis_conn, RedisIncr, JOBS, count=True, acked=False)

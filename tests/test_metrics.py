"""Prometheus metrics (jobrunner/metrics.py, metrics_server.py): aggregation, the endpoint, a real supervisor.

The process test scrapes /metrics from `jobrunner run flask_jobs:registry --metrics-port 0`
(examples/) after jobs ran on both backends; it also checks that the supervisor stays
single-threaded and holds no Postgres or Redis connection after serving scrapes.
"""

import importlib
import os
import select
import signal
import socket
import sys
import types
import urllib.parse
import urllib.request
import uuid

import psycopg2
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from jobrunner import config
from jobrunner.ops import metrics
from jobrunner.ops import metrics_server
from jobrunner.errors import ConfigError
from jobrunner.process.messages import Done, JobEntry

from helpers import CliProcess, tcp_sockets, wait_for
from test_flask_example import EXAMPLES, ExampleProcess


def samples(text):
    """{(name, frozenset(labels)): value} of a scrape."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(scraped, name, **labels):
    return scraped.get((name, frozenset(labels.items())))


# -- aggregation --------------------------------------------------------------------------------

def test_starts_and_ends_count_jobs_by_worker_queue_and_outcome():
    m = metrics.Metrics()
    m.started("pgmq", "q", "Mail")
    m.finished("pgmq", "q", "Mail", "done", 0.3)
    m.started("pgmq", "q", "Mail")
    m.finished("pgmq", "q", "Mail", "retry", 2.0)
    m.finished("sidekiq", None, None, "done", "bogus")
    got = samples(m.render().decode())
    assert value(got, "jobrunner_jobs_started_total", backend="pgmq", queue="q",
                 worker="Mail") == 2
    assert value(got, "jobrunner_jobs_total", backend="pgmq", queue="q", worker="Mail",
                 outcome="done") == 1
    assert value(got, "jobrunner_jobs_total", backend="pgmq", queue="q", worker="Mail",
                 outcome="retry") == 1
    assert value(got, "jobrunner_jobs_total", backend="sidekiq", queue="unknown",
                 worker="unknown", outcome="done") == 1
    assert value(got, "jobrunner_job_duration_seconds_count", backend="pgmq",
                 worker="Mail") == 2
    assert value(got, "jobrunner_job_duration_seconds_sum", backend="pgmq",
                 worker="Mail") == pytest.approx(2.3)
    assert value(got, "jobrunner_job_duration_seconds_bucket", backend="pgmq", worker="Mail",
                 le="0.5") == 1
    # a malformed duration is not observed
    assert value(got, "jobrunner_job_duration_seconds_count", backend="sidekiq",
                 worker="unknown") is None


def test_a_child_that_dies_under_a_job_counts_a_lost_run_and_an_exit():
    m = metrics.Metrics()
    running = JobEntry(worker="Slow", queue="q")
    m.child_exited("sidekiq", "worker", running, "timeout", -9)
    m.child_exited("sidekiq", "worker", None, None, 0)
    m.child_exited("pgmq", "housekeeper", None, None, 1)
    got = samples(m.render().decode())
    assert value(got, "jobrunner_jobs_total", backend="sidekiq", queue="q", worker="Slow",
                 outcome="lost") == 1
    assert value(got, "jobrunner_child_exits_total", backend="sidekiq", kind="worker",
                 reason="timeout") == 1
    assert value(got, "jobrunner_child_exits_total", backend="sidekiq", kind="worker",
                 reason="exit") == 1
    assert value(got, "jobrunner_child_exits_total", backend="pgmq", kind="housekeeper",
                 reason="crash") == 1


def _pool(name, size, running):
    children = {i: types.SimpleNamespace(running={"id": i} if i < running else None)
                for i in range(size)}
    return types.SimpleNamespace(name=name, backend_name=name, size=size, children=children,
                                 queues=["q"])


def test_pool_gauges_and_queue_numbers_are_computed_at_render():
    pools = [_pool("pgmq", 3, 2), _pool("sidekiq", 2, 0)]
    m = metrics.Metrics(pools=lambda: pools)
    assert m.age() == float("inf")
    m.update_queues({"pgmq": {"ok": True, "queues": {"q": {"waiting": 4, "latency": 2.5}},
                              "totals": {"scheduled": 1, "retrying": 2, "dead": 3}},
                     "sidekiq": {"ok": False, "error": "down"}}, now=1000.0)
    got = samples(m.render().decode())
    assert value(got, "jobrunner_busy_children", backend="pgmq") == 2
    assert value(got, "jobrunner_children", backend="pgmq") == 3
    assert value(got, "jobrunner_pool_size", backend="sidekiq") == 2
    assert value(got, "jobrunner_queue_waiting", backend="pgmq", queue="q") == 4
    assert value(got, "jobrunner_queue_latency_seconds", backend="pgmq", queue="q") == 2.5
    assert value(got, "jobrunner_jobs_dead", backend="pgmq") == 3
    assert value(got, "jobrunner_backend_up", backend="pgmq") == 1
    assert value(got, "jobrunner_backend_up", backend="sidekiq") == 0
    assert m.age(now=1001.0) == float("inf")          # sidekiq was never read
    m.update_queues({"sidekiq": {"ok": True, "queues": {}, "totals": {}}}, now=1000.5)
    assert m.age(now=1001.0) == pytest.approx(1.0)
    m.mark_down(["pgmq"])
    assert value(samples(m.render().decode()), "jobrunner_backend_up", backend="pgmq") == 0


def test_settings_flag_and_environment():
    assert config.resolve(environ={}).metrics_port is None          # off unless asked
    assert config.resolve(environ={"JOBRUNNER_METRICS_PORT": "9400"}).metrics_port == 9400
    assert config.resolve(flags={"metrics_port": 9401},
                          environ={"JOBRUNNER_METRICS_PORT": "9400"}).metrics_port == 9401
    with pytest.raises(ConfigError):
        config.resolve(flags={"metrics_port": 70000}, environ={})
    with pytest.raises(ConfigError):
        config.resolve(environ={"JOBRUNNER_METRICS_PORT": "nine"})
    from jobrunner.cli.main import _parser
    args = _parser().parse_args(["run", "a:b", "--metrics-port", "9402"])
    assert args.metrics_port == 9402


# -- the endpoint, driven by a select loop like the supervisor's --------------------------------

class _Loop:
    """The part of the supervisor a MetricsServer uses; no pools, so no reader is forked."""

    def __init__(self):
        self.pools = []
        self.settings = config.resolve(environ={})


def _drive(server, request, timeout=5.0):
    """Send ``request`` and run select passes until the server has answered and closed."""
    client = socket.create_connection(("127.0.0.1", server.port))
    client.sendall(request)
    client.setblocking(False)
    reply = b""
    deadline = timeout
    while deadline > 0:
        reads, writes = server.watch()
        readable, writable, _ = select.select(reads + [client], writes, [], 0.05)
        server.serve(readable, writable)
        if client in readable:
            chunk = client.recv(65536)
            if not chunk:
                break
            reply += chunk
        deadline -= 0.05
    client.close()
    return reply


def test_a_done_that_names_no_worker_counts_for_the_job_its_child_was_running():
    server = metrics_server.MetricsServer(_Loop(), 0, host="127.0.0.1")
    try:
        record = types.SimpleNamespace(pool=types.SimpleNamespace(backend_name="pgmq"),
                                       running=JobEntry(id="j1", worker="Mail", queue="q"))
        server.finished(record, Done(id="j1", outcome="done", micros=300000))
        server.finished(record, Done(id="j2", worker="Other", queue="r", outcome="retry"))
        got = samples(server.metrics.render().decode())
        assert value(got, "jobrunner_jobs_total", backend="pgmq", queue="q", worker="Mail",
                     outcome="done") == 1
        assert value(got, "jobrunner_jobs_total", backend="pgmq", queue="r", worker="Other",
                     outcome="retry") == 1
        # the entry's whole microseconds, observed in seconds; no duration: none observed
        assert value(got, "jobrunner_job_duration_seconds_sum", backend="pgmq",
                     worker="Mail") == 0.3
        assert value(got, "jobrunner_job_duration_seconds_count", backend="pgmq",
                     worker="Other") is None
    finally:
        server.close()


def test_the_endpoint_answers_without_blocking_and_closes_its_sockets():
    server = metrics_server.MetricsServer(_Loop(), 0, host="127.0.0.1")
    try:
        server.started(types.SimpleNamespace(pool=types.SimpleNamespace(backend_name="pgmq"),
                                             running=None),
                       JobEntry(worker="W", queue="q"))
        reply = _drive(server, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"version=0.0.4" in head
        assert b'jobrunner_jobs_started_total{backend="pgmq",queue="q",worker="W"} 1.0' in body
        assert _drive(server, b"GET /nope HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 404")
        assert _drive(server, b"POST /metrics HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 405")
        assert _drive(server, b"GET /healthz HTTP/1.0\r\n\r\n").endswith(b"\r\n\r\nok\n")
        head_only = _drive(server, b"HEAD /metrics HTTP/1.0\r\n\r\n")
        assert head_only.startswith(b"HTTP/1.1 200") and head_only.endswith(b"\r\n\r\n")
        # a client that never finishes its request is dropped, not waited for
        idle = socket.create_connection(("127.0.0.1", server.port))
        wait_for(lambda: (server.serve(*select.select(server.watch()[0], [], [], 0.05)[:2])
                          or server.clients), 5, message="the idle client accepted")
        server.clients[next(iter(server.clients))].since -= metrics_server.REQUEST_TIMEOUT + 1
        server.serve([], [])
        assert not server.clients
        idle.close()
        # a forked process closes its copies; the parent keeps serving
        pid = os.fork()
        if pid == 0:
            os._exit(0 if server.listener is None else 1)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        assert server.listener is not None
    finally:
        server.close()
    assert server.listener is None


def test_a_port_in_use_is_a_settings_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(ConfigError, match="cannot serve metrics on port"):
            metrics_server.MetricsServer(_Loop(), taken.getsockname()[1], host="127.0.0.1")


# -- readers against the real servers ---------------------------------------------------------

def test_readers_report_depth_and_latency(pg_dsn, pg_conn, queue_name, redis_url, redis_conn):
    import jobrunner
    from jobrunner.backends.pgmq.enqueue import PgEnqueuer
    from jobrunner.backends.sidekiq.enqueue import SidekiqEnqueuer

    class PgJob(jobrunner.Worker):
        enqueuer = PgEnqueuer
        queue = queue_name

    class RedisJob(jobrunner.Worker):
        enqueuer = SidekiqEnqueuer
        queue = "metrics_q"

    PgJob.enqueue_batch(pg_conn, [1, 2])
    pg_conn.commit()
    RedisJob.enqueue_batch(redis_conn, [1, 2, 3])
    settings = config.resolve(kwargs={"pg_dsn": pg_dsn, "redis_url": redis_url}, environ={})
    result = metrics.read_all(settings, [("pgmq", [queue_name, "t_never_made"]),
                                         ("sidekiq", ["metrics_q", "empty_q"])])
    assert result["pgmq"]["ok"] and result["sidekiq"]["ok"]
    assert result["pgmq"]["queues"][queue_name]["waiting"] == 2
    assert result["pgmq"]["queues"]["t_never_made"] == {"waiting": 0, "latency": 0.0}
    assert result["sidekiq"]["queues"]["metrics_q"]["waiting"] == 3
    assert result["sidekiq"]["queues"]["metrics_q"]["latency"] >= 0.0
    assert result["sidekiq"]["queues"]["empty_q"] == {"waiting": 0, "latency": 0.0}
    down = config.resolve(kwargs={"redis_url": "redis://127.0.0.1:1/0"}, environ={})
    failed = metrics.read_all(down, [("sidekiq", ["q"])])["sidekiq"]
    assert failed["ok"] is False and "Error" in failed["error"]


# -- a real supervisor ------------------------------------------------------------------------

def _server_ports(pg_dsn, redis_url):
    """The TCP ports of the run's Postgres (5432 when it is on a socket) and Redis."""
    pg_port = psycopg2.extensions.parse_dsn(pg_dsn).get("port") or 5432
    return {int(pg_port), urllib.parse.urlsplit(redis_url).port or 6379}


def _backend_connections(pid, ports):
    """Established TCP connections of ``pid`` to the servers' ``ports``."""
    return [remote for state, _, _, remote in tcp_sockets(pid)
            if state == "01" and remote in ports]


def _threads(pid):
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return None


@pytest.mark.slow
def test_a_supervisor_serves_metrics_for_both_backends(pg_dsn, redis_url, monkeypatch,
                                                       tmp_path):
    namespace = "fm_" + uuid.uuid4().hex[:10]
    env = {"JOBRUNNER_PG_DSN": pg_dsn, "JOBRUNNER_REDIS_URL": redis_url,
           "FLASK_EXAMPLE_NAMESPACE": namespace}
    for key, val in env.items():
        monkeypatch.setenv(key, val)
    monkeypatch.syspath_prepend(EXAMPLES)
    for name in ("flask_app", "flask_jobs"):
        sys.modules.pop(name, None)
    app_module = importlib.import_module("flask_app")
    jobs = sys.modules["flask_jobs"]
    app_module.init_db()
    supervisor = None
    try:
        conn = psycopg2.connect(pg_dsn)
        with conn, conn.cursor() as cur:
            for email in ("a@x", "b@x", "c@x"):
                cur.execute(f"INSERT INTO {jobs.USERS} (email) VALUES (%s) RETURNING id",
                            (email,))
                jobs.SendWelcomeEmail.enqueue(conn, {"user_id": cur.fetchone()[0]})
            jobs.SendWelcomeEmail.enqueue(conn, {"user_id": -1})     # fails: no such user
        conn.close()
        rds = redis.Redis.from_url(redis_url)
        jobs.ResizeImage.enqueue_batch(rds, [{"image": "a.png"}, {"image": "b.png"}])

        supervisor = ExampleProcess(["run", "flask_jobs:registry", "--processes", "2",
                                     "--shutdown-timeout", "5", "--metrics-port", "0"],
                                    env, str(tmp_path / "sv.log"))
        supervisor.wait_for_log("metrics: serving http://127.0.0.1:")
        port = int(supervisor.output().split("metrics: serving http://127.0.0.1:")[1]
                   .split("/")[0])

        def scrape():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                assert r.status == 200
                return samples(r.read().decode())

        mail, images = jobs.SendWelcomeEmail.queue, jobs.ResizeImage.queue

        def all_counted():
            got = scrape()
            done_pg = value(got, "jobrunner_jobs_total", backend="pgmq", queue=mail,
                            worker="SendWelcomeEmail", outcome="done")
            retry_pg = value(got, "jobrunner_jobs_total", backend="pgmq", queue=mail,
                             worker="SendWelcomeEmail", outcome="retry")
            done_rd = value(got, "jobrunner_jobs_total", backend="sidekiq", queue=images,
                            worker="ResizeImage", outcome="done")
            return got if (done_pg, retry_pg, done_rd) == (3, 1, 2) else None

        got = wait_for(all_counted, 30, interval=0.2,
                       message="the jobs counted in /metrics; log:\n" + supervisor.output())
        assert value(got, "jobrunner_job_duration_seconds_count", backend="sidekiq",
                     worker="ResizeImage") == 2
        assert value(got, "jobrunner_jobs_started_total", backend="pgmq", queue=mail,
                     worker="SendWelcomeEmail") == 4
        for backend, queue in (("pgmq", mail), ("sidekiq", images)):
            assert value(got, "jobrunner_backend_up", backend=backend) == 1
            assert value(got, "jobrunner_children", backend=backend) == 2
            assert value(got, "jobrunner_pool_size", backend=backend) == 2
            assert value(got, "jobrunner_busy_children", backend=backend) is not None
            assert value(got, "jobrunner_queue_waiting", backend=backend, queue=queue) \
                is not None
            assert value(got, "jobrunner_queue_latency_seconds", backend=backend,
                         queue=queue) is not None
        # the failed job waits for its backoff: retrying on pgmq
        wait_for(lambda: value(scrape(), "jobrunner_jobs_retrying", backend="pgmq") == 1, 15,
                 interval=0.5, message="one pgmq job retrying")
        # the readers came and went: no thread, no backend connection in the supervisor
        assert _threads(supervisor.pid) == 1
        ports = _server_ports(pg_dsn, redis_url)
        wait_for(lambda: not _backend_connections(supervisor.pid, ports), 10,
                 message="no backend connection in the supervisor")
        assert "metrics: cannot" not in supervisor.output()
        assert "metrics: reading queue numbers took" not in supervisor.output()
    finally:
        if supervisor is not None:
            supervisor.signal(signal.SIGTERM)
            code = supervisor.wait(30)
            supervisor.stop()
            assert code == 0, supervisor.output()[-3000:]
        pool = app_module._per_process.get("pg")
        if pool is not None:
            pool.closeall()
        for name in ("flask_app", "flask_jobs"):
            sys.modules.pop(name, None)
        conn = psycopg2.connect(pg_dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pgmq.drop_queue(%s) WHERE EXISTS "
                        "(SELECT 1 FROM pgmq.list_queues() WHERE queue_name = %s)",
                        (f"{namespace}_mail",) * 2)
            cur.execute(f"DROP TABLE IF EXISTS {namespace}_welcomed, {namespace}_plans, "
                        f"{namespace}_users")
        conn.close()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["pgmq", "sidekiq"])
def test_a_dedicated_pool_is_measured_under_its_backend(backend, pg_dsn, redis_url, tmp_path):
    queue = "dp_" + uuid.uuid4().hex[:10]
    env = {"TEST_BACKEND": backend, "TEST_QUEUE": queue, "FAULT_OUT": str(tmp_path / "runs"),
           "JOBRUNNER_PG_DSN": pg_dsn, "JOBRUNNER_REDIS_URL": redis_url}
    supervisor = CliProcess(["run", "apps.fault_app_pools:registry", "--processes", "1",
                             "--pool", f"{queue}_crit=1", "--shutdown-timeout", "5",
                             "--metrics-port", "0"], env, str(tmp_path / "sv.log"))
    try:
        supervisor.wait_for_log("metrics: serving http://127.0.0.1:")
        port = int(supervisor.output().split("metrics: serving http://127.0.0.1:")[1]
                   .split("/")[0])

        def scrape():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                return samples(r.read().decode())

        got = wait_for(lambda: (lambda g: g if value(g, "jobrunner_backend_up", backend=backend)
                                == 1 else None)(scrape()), 15, interval=0.3,
                       message="the backend up in /metrics; log:\n" + supervisor.output())
        for suffix in ("crit", "b", "c"):        # the dedicated pool's queue and the shared ones
            assert value(got, "jobrunner_queue_waiting", backend=backend,
                         queue=f"{queue}_{suffix}") == 0
        assert value(got, "jobrunner_pool_size", backend=backend) == 2
        assert not [key for key in got if "[" in dict(key[1]).get("backend", "")]
    finally:
        supervisor.signal(signal.SIGTERM)
        code = supervisor.wait(30)
        supervisor.stop()
        assert code == 0, supervisor.output()[-3000:]
        if backend == "pgmq":
            conn = psycopg2.connect(pg_dsn)
            conn.autocommit = True
            with conn.cursor() as cur:
                for suffix in ("crit", "b", "c"):
                    cur.execute("SELECT pgmq.drop_queue(queue_name) FROM pgmq.list_queues() "
                                "WHERE queue_name = %s", (f"{queue}_{suffix}",))
            conn.close()

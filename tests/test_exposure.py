"""Secrets and exposure: no password in any output, TLS failures named as such, and the metrics
endpoint on loopback unless told otherwise. The CLI runs as a user runs it (`python -m
jobrunner ...` in a subprocess) against unreachable ports, the run's Redis, and a Redis of the
test's own that has a password and evicts."""

import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
import uuid
from urllib.parse import urlsplit

import pytest
import redis

from jobrunner import config
from jobrunner.errors import ConfigError
from jobrunner.redact import redact

from helpers import HERE, PrivateRedis, free_port, tcp_sockets
from supervisor_support import supervise  # noqa: F401

SECRET = "hunter2"
#: Nothing listens here: connections are refused at once.
CLOSED_PORT = 1
SETTINGS_ENV = ("JOBRUNNER_PG_DSN", "DATABASE_URL", "JOBRUNNER_REDIS_URL", "REDIS_URL",
                "JOBRUNNER_METRICS_HOST", "JOBRUNNER_METRICS_PORT")


def start_cli(*args, **env):
    """`python -m jobrunner ARGS` with only the given settings in its environment, started
    (several may then run at once); ``finish`` waits for it. Servers not given are closed
    ports, so that no run, whatever it ignores, reaches a default server (the user's)."""
    full_env = {k: v for k, v in os.environ.items() if k not in SETTINGS_ENV}
    full_env.update({"JOBRUNNER_REDIS_URL": f"redis://127.0.0.1:{CLOSED_PORT}/0",
                     "JOBRUNNER_PG_DSN": f"host=127.0.0.1 port={CLOSED_PORT}"}, **env)
    full_env["PYTHONPATH"] = os.pathsep.join([HERE, os.path.dirname(HERE)])
    return subprocess.Popen([sys.executable, "-m", "jobrunner", *args], env=full_env, cwd=HERE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(proc):
    """(exit code, stdout and stderr together) of a ``start_cli`` process; one still running
    after a minute is killed with all it started, and fails the test."""
    try:
        output, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        raise AssertionError(f"still running after 60s: {proc.args}\n{output[-3000:]}")
    return proc.returncode, output


def run_all(commands, **env):
    """{name: (code, output)} of every ``name: args`` command, run at the same time."""
    started = {name: start_cli(*args, **env) for name, args in commands.items()}
    return {name: finish(proc) for name, proc in started.items()}


# -- the masking function ----------------------------------------------------------------------

@pytest.mark.parametrize("given, shown", [
    # URLs: the userinfo's password, and secret query parameters
    ("redis://127.0.0.1:6379/0?password=hunter2", "redis://127.0.0.1:6379/0?password=***"),
    ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
    ("rediss://alice:hunter2@cache/0?db=1&password=hunter2#top",
     "rediss://alice:***@cache/0?db=1&password=***#top"),
    ("redis://cache/0?ssl_password=hunter2;pass=hunter2&passwd=hunter2&pwd=hunter2",
     "redis://cache/0?ssl_password=***;pass=***&passwd=***&pwd=***"),
    ("redis://cache/0?pass%77ord=hunter2", "redis://cache/0?pass%77ord=***"),
    ("redis://cache/0?password=hun@ter2", "redis://cache/0?password=***"),
    ("unix:///run/redis.sock?db=0&password=hunter2", "unix:///run/redis.sock?db=0&password=***"),
    ("postgresql://app:hun%2Fter2@db:5432/app?sslmode=require&sslpassword=hunter2",
     "postgresql://app:***@db:5432/app?sslmode=require&sslpassword=***"),
    ("postgresql://app:hun/ter2@db/app", "postgresql://app:***@db/app"),     # a raw "/"
    ("redis://hunter2@cache/0", "redis://***@cache/0"),      # a password without its ":"
    ("postgresql://app@db/app", "postgresql://app@db/app"),  # a user name
    # libpq key=value DSNs, quoted or not
    ("host=db password=hunter2 dbname=app", "host=db password=*** dbname=app"),
    ("host=db password = 'hunter 2' dbname=app", "host=db password = '***' dbname=app"),
    (r"host=db password='hun\'ter2' dbname=app", "host=db password='***' dbname=app"),
    ("host=db PASSWORD=hunter2", "host=db PASSWORD=***"),
    ("host=db sslpassword=hunter2 sslmode=require", "host=db sslpassword=*** sslmode=require"),
    ("dbname='postgresql://app:hunter2@db/app' connect_timeout=3",
     "dbname='postgresql://app:***@db/app' connect_timeout=3"),
    ("options='-c password=hunter2' host=db", "options='-c password=***' host=db"),
    # not libpq's syntax: what may belong to the password is hidden as well
    ("host=db password=hunter 2", "host=db password=*** ***"),
    ("host=db password='hunter2", "host=db password='***'"),
    # nothing secret: unchanged
    ("redis://cache:6379/0", "redis://cache:6379/0"),
    ("postgresql://app@db/app?sslmode=require&passfile=/etc/pgpass",
     "postgresql://app@db/app?sslmode=require&passfile=/etc/pgpass"),
    ("host=db dbname=app user=app", "host=db dbname=app user=app"),
    ("localhost:6379", "localhost:6379"),
    ("", ""),
    (None, ""),
])
def test_redact_masks_every_form_of_password(given, shown):
    assert redact(given) == shown
    assert "hunter" not in shown and "ter2" not in shown


# -- the CLI's outputs --------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    f"redis://127.0.0.1:{CLOSED_PORT}/0?password={SECRET}",
    f"redis://:{SECRET}@127.0.0.1:{CLOSED_PORT}/0",
])
def test_no_output_about_an_unreachable_redis_shows_its_password(url):
    results = run_all({
        "stats": ["stats", "--backend", "sidekiq"],
        "stats --json": ["stats", "--backend", "sidekiq", "--json"],
        "check": ["check", "--backend", "sidekiq"],
        "check --json": ["check", "--backend", "sidekiq", "--json"],
        "dead list": ["dead", "list", "--backend", "sidekiq"],
        "run": ["run", "apps.redis_app:registry"],
    }, JOBRUNNER_REDIS_URL=url)
    codes = {"stats": 4, "stats --json": 4, "check": 1, "check --json": 1, "dead list": 4,
             "run": 4}
    for name, (code, output) in results.items():
        assert code == codes[name], (name, output)
        assert f"127.0.0.1:{CLOSED_PORT}" in output, (name, output)       # still says where
        assert SECRET not in output, (name, output)
        assert "Traceback" not in output, (name, output)


def test_no_output_about_an_unreachable_postgres_shows_its_password():
    dsn = f"host=127.0.0.1 port={CLOSED_PORT} dbname=app user=app password={SECRET}"
    results = run_all({"stats": ["stats", "--backend", "pgmq"],
                       "check": ["check", "--backend", "pgmq", "--json"],
                       "dead list": ["dead", "list", "--backend", "pgmq"]},
                      JOBRUNNER_PG_DSN=dsn)
    for name, (code, output) in results.items():
        assert code in (1, 4) and "unreachable" in output, (name, output)
        assert SECRET not in output, (name, output)


def test_an_invalid_dsn_is_a_settings_error_that_hides_the_password():
    # libpq quotes the word it choked on, here a piece of the password.
    dsn = f"host=127.0.0.1 port={CLOSED_PORT} password=correct horse"
    code, output = finish(start_cli("check", "--backend", "pgmq", "--pg-dsn", dsn))
    assert code == 2, output
    assert "is not valid" in output and "password=***" in output, output
    assert "correct" not in output and "horse" not in output, output
    assert "Traceback" not in output, output


@pytest.fixture
def evicting_redis(tmp_path):
    """A Redis of this test's own that asks for a password and may evict (allkeys-lru)."""
    server = PrivateRedis(tmp_path / "redis").start()
    admin = redis.Redis(port=server.port)
    admin.config_set("maxmemory-policy", "allkeys-lru")
    admin.config_set("requirepass", SECRET)
    admin.close()
    yield f"redis://127.0.0.1:{server.port}/0?password={SECRET}"
    server.stop()


def test_the_maxmemory_warning_of_check_and_run_hides_the_password(evicting_redis, supervise):
    code, output = finish(start_cli("check", "--backend", "sidekiq",
                                    "--redis-url", evicting_redis))
    assert code == 0, output
    assert "maxmemory-policy allkeys-lru" in output, output
    assert "?password=***" in output and SECRET not in output, output

    sv = supervise("redis_app", "--processes", "1", "--shutdown-timeout", "5",
                   env={"JOBRUNNER_REDIS_URL": evicting_redis,
                        "TEST_QUEUE": "ex_" + uuid.uuid4().hex[:8]})
    sv.wait_log("maxmemory-policy allkeys-lru")
    sv.wait_workers(1)
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0, sv.log()
    assert "?password=***" in sv.log()
    assert SECRET not in sv.log()


# -- TLS failures -------------------------------------------------------------------------------

def test_a_tls_url_on_a_plain_redis_port_says_tls(redis_server_url):
    # The run's Redis speaks plain RESP: a TLS handshake with it gets no answer.
    where = urlsplit(redis_server_url)
    url = f"rediss://{where.hostname}:{where.port}/0?password={SECRET}"
    results = run_all({"check": ["check", "--backend", "sidekiq"],
                       "stats": ["stats", "--backend", "sidekiq"]}, JOBRUNNER_REDIS_URL=url)
    for name, (code, output) in results.items():
        assert code == {"check": 1, "stats": 4}[name], (name, output)
        assert "TLS" in output, (name, output)
        assert f"rediss://{where.hostname}:{where.port}/0?password=***" in output, (name, output)
        assert SECRET not in output and "Traceback" not in output, (name, output)


class _OneShotServer:
    """Answers each connection's first bytes with ``reply`` and closes it: what a server that
    does not speak TLS (or refuses it) says to a TLS client."""

    def __init__(self, reply):
        self.reply = reply
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return                                  # closed: the test is over
            with conn:
                conn.settimeout(10)
                try:
                    conn.recv(4096)
                    conn.sendall(self.reply)
                    conn.recv(4096)                     # until the client gives up
                except OSError:
                    pass

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("backend, reply, target, said", [
    # Plain text where a TLS handshake was expected.
    ("sidekiq", b"-ERR this is not TLS\r\n", "rediss://127.0.0.1:{port}/0?password={secret}",
     "TLS failed"),
    # "N": a Postgres server's answer to libpq's SSLRequest when it has no TLS.
    ("pgmq", b"N", "host=127.0.0.1 port={port} dbname=app user=app password={secret} "
                   "sslmode=require", "TLS (SSL) failed"),
])
def test_a_tls_error_is_named_tls(backend, reply, target, said):
    server = _OneShotServer(reply)
    try:
        flag = {"sidekiq": "--redis-url", "pgmq": "--pg-dsn"}[backend]
        code, output = finish(start_cli("stats", "--backend", backend, flag,
                                        target.format(port=server.port, secret=SECRET)))
    finally:
        server.close()
    assert code == 4, output
    assert said in output and "password=***" in output, output
    assert SECRET not in output and "Traceback" not in output, output


# -- where the metrics endpoint listens ----------------------------------------------------------

def test_metrics_host_setting_flag_and_environment():
    assert config.resolve(environ={}).metrics_host == "127.0.0.1"
    assert config.resolve(environ={"JOBRUNNER_METRICS_HOST": "::1"}).metrics_host == "::1"
    assert config.resolve(flags={"metrics_host": "0.0.0.0"},
                          environ={"JOBRUNNER_METRICS_HOST": "::1"}).metrics_host == "0.0.0.0"
    assert config.resolve(kwargs={"metrics_host": "localhost"}).metrics_host == "localhost"
    for bad in ("", "not a host", "10.0.0.256", "[::1]", "http://0.0.0.0"):
        with pytest.raises(ConfigError, match="metrics host must be"):
            config.Settings(metrics_host=bad)


def test_a_bad_metrics_host_stops_run_with_exit_2_naming_it():
    results = run_all({"flag": ["run", "apps.redis_app:registry", "--metrics-port", "0",
                                "--metrics-host", "not a host"]})
    results.update(run_all({"environment": ["run", "apps.redis_app:registry"]},
                           JOBRUNNER_METRICS_PORT="0", JOBRUNNER_METRICS_HOST="10.0.0.256"))
    for name, value in (("flag", "'not a host'"), ("environment", "'10.0.0.256'")):
        code, output = results[name]
        assert code == 2, (name, output)
        assert f"metrics host must be an IP address or a host name, got {value}" in output
        assert "Traceback" not in output


def _listening(pid, port):
    """Local addresses on which process ``pid`` has a TCP socket listening on ``port``."""
    return [address for state, address, local_port, _ in tcp_sockets(pid)
            if state == "0A" and local_port == port]


def _answers(host, port):
    try:
        with socket.create_connection((host, port), timeout=5):
            return True
    except ConnectionRefusedError:
        return False


def test_loopback_addresses_other_than_127_0_0_1_reach_a_wildcard_listener():
    # What makes the checks below meaningful: 127.0.0.2 is this machine too, so a socket on
    # every interface answers there and one on 127.0.0.1 only does not.
    with socket.socket() as everywhere, socket.socket() as loopback:
        everywhere.bind(("0.0.0.0", 0))
        everywhere.listen(1)
        loopback.bind(("127.0.0.1", 0))
        loopback.listen(1)
        assert _answers("127.0.0.2", everywhere.getsockname()[1])
        assert not _answers("127.0.0.2", loopback.getsockname()[1])


@pytest.mark.parametrize("chosen", [None, "127.0.0.2"])
def test_a_supervisor_serves_metrics_on_loopback_unless_told(chosen, supervise, redis_url):
    port = free_port()
    args = ["--processes", "1", "--shutdown-timeout", "5", "--metrics-port", str(port)]
    if chosen:
        args += ["--metrics-host", chosen]
    host = chosen or "127.0.0.1"
    other = "127.0.0.1" if chosen else "127.0.0.2"
    sv = supervise("redis_app", *args, env={"JOBRUNNER_REDIS_URL": redis_url,
                                           "TEST_QUEUE": "ex_" + uuid.uuid4().hex[:8]})
    sv.wait_log(f"metrics: serving http://{host}:{port}/metrics")
    with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=10) as answer:
        assert answer.read() == b"ok\n"
    assert _listening(sv.pid, port) == [host]
    assert not _answers(other, port)
    sv.signal(signal.SIGTERM)
    assert sv.wait_exit() == 0, sv.log()

"""A server that stops answering without closing the connection is noticed by the connection
itself, within the bound docs/troubleshooting.md promises (``backends/timeouts.py``).

The hang is a TCP proxy (``proxy.py``) in front of the run's Postgres that stops forwarding
and keeps every socket open. Its kernel still acknowledges what arrives until its small
receive window is full; after that the rest of a statement stays unsent, which is what a
network that drops packets does to any statement, and what TCP's user timeout is for.
"""

import os
import socket
import threading
import time

import psycopg2
import psycopg2.extensions
import pytest

import jobrunner
from jobrunner.backends import timeouts
from jobrunner.backends.pgmq.connection import connect
from jobrunner.backends.sidekiq.backend import SidekiqBackend
from jobrunner.config import Settings
from jobrunner.errors import BackendUnavailable

from proxy import TcpProxy

#: Seconds allowed beyond the documented bound (the kernel's probe timers, a loaded machine).
SLACK = 5
#: Bytes of a statement that cannot fit in the hung proxy's window and buffers.
BIG = 1 << 20


def _target(dsn):
    """Where ``dsn``'s server listens: ``(host, port)``, or its Unix socket's path."""
    params = psycopg2.extensions.parse_dsn(dsn)
    host = params.get("host") or "127.0.0.1"
    port = int(params.get("port") or 5432)
    return f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)


def _through(proxy, dsn):
    """``dsn``, over TCP through ``proxy``."""
    return psycopg2.extensions.make_dsn(dsn, host="127.0.0.1", port=proxy.port)


class _InThread:
    """Runs ``call`` in a thread; ``wait(seconds)`` says whether it ended in time."""

    def __init__(self, call):
        self.error = self.value = None
        self.elapsed = None
        self._done = threading.Event()
        self._started = time.monotonic()
        threading.Thread(target=self._run, args=(call,), daemon=True).start()

    def _run(self, call):
        try:
            self.value = call()
        except Exception as exc:
            self.error = exc
        finally:
            self.elapsed = time.monotonic() - self._started
            self._done.set()

    def wait(self, seconds):
        return self._done.wait(seconds)


def _tcp_options(fd):
    """Keepalive and user timeout of the TCP socket ``fd`` (a duplicate is inspected)."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        return {"keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                "user_timeout": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)}
    finally:
        sock.close()


DEFAULTS = {"keepalive": 1, "idle": timeouts.KEEPALIVE_IDLE,
            "interval": timeouts.KEEPALIVE_INTERVAL, "count": timeouts.KEEPALIVE_COUNT,
            "user_timeout": timeouts.USER_TIMEOUT * 1000}


@pytest.fixture
def proxy(pg_dsn):
    with TcpProxy(_target(pg_dsn), receive_buffer=4096) as running:
        yield running


def test_a_statement_to_a_hung_postgres_fails_within_the_bound(pg_dsn, proxy):
    conn = connect(_through(proxy, pg_dsn), "jobrunner-hang-test")
    query = None
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
        proxy.hang()

        def statement():
            with conn.cursor() as cur:
                cur.execute("SELECT length(%s)", ("x" * BIG,))
        query = _InThread(statement)
        assert query.wait(timeouts.HUNG_SERVER_BOUND + SLACK), \
            f"the statement still waits {timeouts.HUNG_SERVER_BOUND + SLACK}s into the hang"
        # A connection error (the child reconnects after one), after the timeout, not at once.
        assert isinstance(query.error, psycopg2.OperationalError), query.error
        assert query.elapsed >= timeouts.USER_TIMEOUT - 1, query.elapsed
    finally:
        if query is not None and not query.wait(0):
            # Still stuck: closing the proxy's sockets ends the statement, which holds the
            # connection that close() needs.
            proxy.close()
            query.wait(30)
        conn.close()


def test_connecting_to_a_hung_postgres_fails_within_the_connect_timeout(pg_dsn, proxy):
    proxy.hang()          # the TCP handshake completes; libpq's startup never gets an answer
    attempt = _InThread(lambda: connect(_through(proxy, pg_dsn), "jobrunner-hang-test"))
    assert attempt.wait(timeouts.CONNECT_TIMEOUT + SLACK), "connect() still waits"
    assert isinstance(attempt.error, BackendUnavailable), attempt.error
    assert "Postgres is unreachable" in str(attempt.error)


def test_every_postgres_connection_has_keepalive_and_a_user_timeout(pg_dsn, proxy):
    conn = connect(_through(proxy, pg_dsn))
    try:
        assert _tcp_options(conn.fileno()) == DEFAULTS
    finally:
        conn.close()
    # What the DSN sets wins over jobrunner's defaults.
    dsn = psycopg2.extensions.make_dsn(_through(proxy, pg_dsn), keepalives_idle=7,
                                       tcp_user_timeout=3000)
    conn = connect(dsn)
    try:
        assert _tcp_options(conn.fileno()) == dict(DEFAULTS, idle=7, user_timeout=3000)
    finally:
        conn.close()


def test_every_redis_client_has_timeouts_and_keepalive(redis_url):
    backend = SidekiqBackend(Settings(redis_url=redis_url), jobrunner.Registry())
    consumer = backend.consumer(["hang_test"], "hang-test:1")
    inspector = backend.inspector(timeout=3.0)
    clients = {"consumer": consumer.client, "inspector": inspector.conn,
               "check": backend._client()}
    try:
        for name, client in clients.items():
            client.ping()
            kwargs = client.connection_pool.connection_kwargs
            assert kwargs["socket_timeout"] and kwargs["socket_connect_timeout"], name
            assert kwargs["socket_keepalive"] is True, name
            connection = client.connection_pool.get_connection()
            try:
                assert _tcp_options(connection._sock.fileno()) == DEFAULTS, name
            finally:
                client.connection_pool.release(connection)
    finally:
        consumer.close()
        inspector.close()
        clients["check"].close()

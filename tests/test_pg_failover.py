"""A supervisor on a multi-host DSN follows a promoted standby under load, losing no job that
synchronous replication acknowledged, and never takes a read-only server for the primary.

The load test (``failover_support.py``) is a web app enqueuing one job per commit through a
multi-host DSN and a supervisor draining them through another (both libpq forms, each naming
the primary and its standby). Mid-load the primary dies (``pg_ctl stop -m immediate``) and,
once the children have seen it go and been turned away by the read-only standby, the standby
is promoted, as a failover tool would. The enqueuer retries every failed commit as a new job
and counts only the commits it saw succeed. Printed: when the children noticed, when jobs ran
again, how many acknowledged jobs never ran, how many ran twice. Then the old primary comes
back read-only, first in the supervisor's DSN: reconnecting children and the CLI pass over it.
``scripts/pg_failover.py`` runs the same failover with a longer wait before the promotion.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import psycopg2
import pytest

import jobrunner
from helpers import HERE, free_port, wait_for
from jobrunner.backends import timeouts
from jobrunner.backends.memory import MemoryBackend, MemoryConsumer
from jobrunner.backends.pgmq.connection import STANDBY_RETRY_SECONDS, connect
from jobrunner.config import Settings
from jobrunner.errors import ConfigError, ServerUnreachable
from jobrunner.process.channel import Channel
from jobrunner.process.child import MAX_RECONNECT_DELAY, ChildLoop
from failover_support import BATCH, Sender, describe, fail_over_under_load, runs_since
from replication_support import ReplicatedPostgres
from supervisor_support import supervise  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow

#: Seconds from the kill until the children notice, at most: what keepalive and the TCP user
#: timeout guarantee when a host vanishes (here its host stays up and closes the connections).
NOTICE_BOUND = timeouts.HUNG_SERVER_BOUND
#: Seconds from the promotion until jobs run again, at most: while the standby answers as one,
#: a child tries again within STANDBY_RETRY_SECONDS (else within MAX_RECONNECT_DELAY), and each
#: try may spend CONNECT_TIMEOUT on each of the two hosts (libpq applies it per host).
RECOVERY_BOUND = STANDBY_RETRY_SECONDS + 2 * timeouts.CONNECT_TIMEOUT


def _needs_clusters():
    if ReplicatedPostgres.available():
        return
    reason = "needs root and /usr/lib/postgresql/15/bin (initdb, pg_ctl, pg_basebackup)"
    if os.environ.get("CI"):
        pytest.fail(reason)        # CI installs them: a missing tool is a failure there
    pytest.skip(reason)


def _replicated(synchronous):
    _needs_clusters()
    return ReplicatedPostgres(tempfile.mkdtemp(prefix="jr-pgfail-"), synchronous).start()


#: (synchronous replication, the replication link stalls before the primary dies)
CASES = [pytest.param((True, True), id="sync-stalled-link"),
         pytest.param((False, True), id="async-stalled-link"),
         pytest.param((False, False), id="async")]


@pytest.fixture(params=CASES)
def case(request):
    """(a primary and its standby, whether the test stalls the link between them)."""
    synchronous, stalled = request.param
    made = _replicated(synchronous)
    yield made, stalled
    made.destroy()


@pytest.fixture(scope="module")
def steady_cluster():
    """A primary and standby that no test fails over."""
    made = _replicated(False)
    yield made
    made.destroy()


def sessions(server):
    """Application names of the client sessions on ``server``."""
    return sorted(name for (name,) in ReplicatedPostgres.sql(
        server, "SELECT application_name FROM pg_stat_activity WHERE backend_type = "
                "'client backend' AND pid <> pg_backend_pid()"))


def jobrunner_cli(*args, dsn):
    return subprocess.run([sys.executable, "-m", "jobrunner", *args, "--pg-dsn", dsn],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=os.path.dirname(HERE)))


def test_children_follow_the_promoted_standby_and_lose_no_synchronously_replicated_job(
        supervise, case):
    cluster, stalled = case
    queue = "pf_" + uuid.uuid4().hex[:10]
    env = {"JOBRUNNER_PG_DSN": cluster.dsn(), "TEST_QUEUE": queue, "JOBRUNNER_LOG_LEVEL": "INFO"}
    sv = supervise("failover_app", "--processes", "2", "--timeout-grace", "0.5", env=env)
    sv.wait_workers(2, 20)
    figures = fail_over_under_load(sv, cluster, queue, stalled)
    print("\n" + describe(cluster, stalled, figures))
    assert figures["noticed s"] <= NOTICE_BOUND, figures
    assert figures["resumed after promotion s"] <= RECOVERY_BOUND, figures
    # It carries on: every job acknowledged by the new primary ran.
    assert figures["acknowledged after promotion"] > 0, figures
    assert figures["unrun after promotion"] == 0, figures
    if cluster.synchronous:       # the stalled batch waited for the standby, in vain
        assert (figures["stalled batch"], figures["lost"]) == ("OperationalError", 0), figures
    elif stalled:                 # acknowledged, never on the standby: all of it gone
        assert (figures["stalled batch"], figures["lost from the batch"]) == (
            "acknowledged", BATCH), figures
    _old_primary_back_read_only(sv, cluster)


def _old_primary_back_read_only(sv, cluster):
    """The demoted old primary answers again, first in the supervisor's DSN: children that
    reconnect (their sessions cut, as a restart would) and the CLI go to the new primary."""
    cluster.bring_back_old_primary_read_only()
    new = cluster.standby
    cluster.sql(new, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE application_name = 'jobrunner'")
    conn = psycopg2.connect(cluster.dsn())
    before = time.time()
    Sender.enqueue_batch(conn, [{"n": -n} for n in range(1, 21)])
    conn.commit()
    conn.close()
    wait_for(lambda: {-n for n in range(1, 21)} <= set(runs_since(sv.out, before)), 30, 0.05,
             message="jobs run after the children reconnected; log:\n" + sv.log()[-3000:])
    # Two children and the housekeeper, all on the new primary; none on the read-only one.
    wait_for(lambda: sessions(new).count("jobrunner") == 3, 15, 0.1,
             message=f"the children and housekeeper back on the new primary: {sessions(new)}")
    assert "jobrunner" not in sessions(cluster.primary)
    busy = jobrunner_cli("busy", "--json", dsn=cluster.dsn())
    assert busy.returncode == 0, busy.stderr
    identity = next(p["identity"] for p in json.loads(busy.stdout)["processes"]
                    if p["pid"] == sv.pid)
    stop = jobrunner_cli("stop", identity, dsn=cluster.dsn())
    assert stop.returncode == 0, stop.stderr
    assert sv.wait_exit() == 0                # the housekeeper took the signal on the new one
    assert "exited unexpectedly" not in sv.log(), sv.log()[-3000:]


# -- what connect() adds to a multi-host DSN ---------------------------------------------------

@pytest.mark.parametrize("uri", [True, False], ids=["uri", "keywords"])
def test_a_multi_host_dsn_reaches_the_primary_even_with_the_standby_first(steady_cluster, uri):
    standby_first = steady_cluster.dsn(uri=uri, standby_first=True, target_session_attrs=None)
    conn = connect(standby_first)        # no target_session_attrs: connect() asks read-write
    try:
        assert conn.info.port == steady_cluster.primary.port
        parameters = conn.get_dsn_parameters()
        assert parameters["target_session_attrs"] == "read-write"
        assert (parameters["keepalives"], parameters["connect_timeout"]) == (
            "1", str(timeouts.CONNECT_TIMEOUT))
    finally:
        conn.close()
    anywhere = connect(steady_cluster.dsn(uri=uri, standby_first=True,
                                          target_session_attrs="any"))
    try:                                  # what the DSN says wins: libpq takes the first host
        assert anywhere.info.port == steady_cluster.standby.port
    finally:
        anywhere.close()


def test_pgtargetsessionattrs_in_the_environment_is_left_to_libpq(steady_cluster, monkeypatch):
    monkeypatch.setenv("PGTARGETSESSIONATTRS", "any")
    conn = connect(steady_cluster.dsn(standby_first=True, target_session_attrs=None))
    try:
        assert conn.info.port == steady_cluster.standby.port
    finally:
        conn.close()


def test_the_connect_timeout_applies_to_each_host_in_turn(steady_cluster):
    # A first host that accepts the TCP connection and then never answers, as a hung server.
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        dsn = (f"host=127.0.0.1,127.0.0.1 port={hung.getsockname()[1]},"
               f"{steady_cluster.primary.port} user=postgres dbname=postgres")
        started = time.monotonic()
        conn = connect(dsn, timeout=1)
        took = time.monotonic() - started
    try:
        assert conn.info.port == steady_cluster.primary.port
        assert 1 <= took < 1 + 2, took        # one timeout spent on the hung host, then on
    finally:
        conn.close()


def test_an_unreachable_multi_host_dsn_names_each_host_and_hides_the_password():
    ports = [str(free_port()), str(free_port())]
    dsn = (f"postgresql://jobs:s3cret@127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/db"
           "?target_session_attrs=read-write")
    with pytest.raises(ServerUnreachable) as raised:
        connect(dsn, timeout=1)
    message = str(raised.value)
    assert all(f"port {port} failed" in message for port in ports), message
    assert "s3cret" not in message
    assert raised.value.retry_in is None       # nobody answered: the child's usual backoff


def test_a_standby_turning_the_connection_away_asks_for_short_retries(steady_cluster):
    only_the_standby = f"postgresql://postgres@127.0.0.1:{steady_cluster.standby.port}/postgres"
    with pytest.raises(ServerUnreachable) as raised:
        connect(only_the_standby + "?target_session_attrs=read-write", timeout=2)
    assert "session is read-only" in str(raised.value)
    assert raised.value.retry_in == STANDBY_RETRY_SECONDS


def test_a_child_retries_at_most_every_retry_in_while_a_standby_answers():
    """While the backend says a standby answers, the child's backoff stops at ``retry_in``
    instead of MAX_RECONNECT_DELAY; a plain outage still backs off to the cap."""
    waits = _reconnect_waits([ServerUnreachable("standby", retry_in=1.0)] * 8)
    assert waits == [0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0, 1.0]
    waits = _reconnect_waits([ServerUnreachable("refused")] * 8)
    assert waits == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, MAX_RECONNECT_DELAY, MAX_RECONNECT_DELAY]


class _FailingBackend(MemoryBackend):
    """Raises the given errors from ``consumer`` one by one, then hands out a consumer."""

    connection_errors = (ServerUnreachable,)

    def __init__(self, errors):
        super().__init__(Settings(), jobrunner.Registry(), MemoryConsumer())
        self.errors = list(errors)

    def consumer(self, queues, child_id, acks=None):
        if self.errors:
            raise self.errors.pop(0)
        return super().consumer(queues, child_id, acks)


def _reconnect_waits(errors):
    """The seconds a child waits between its tries to connect through ``errors``."""
    backend = _FailingBackend(errors)
    ours, theirs = Channel.pair()
    try:
        loop = ChildLoop(backend, backend.registry, Settings(), ["default"], "test:1", theirs,
                         "test")
        waits = []
        loop._wait_channel = lambda seconds: waits.append(round(seconds, 3))
        loop._beat_if_due = lambda: None
        loop._connect()
        assert loop.consumer is backend.shared_consumer
        return waits
    finally:
        ours.close()
        theirs.close()


def test_an_invalid_multi_host_dsn_is_shown_with_its_password_masked():
    dsn = "host=db1,db2 port=5432,5433 password=s3cret target_session_attrs=read-write oops"
    with pytest.raises(ConfigError) as raised:
        connect(dsn)
    message = str(raised.value)
    assert "host=db1,db2 port=5432,5433 password=*** target_session_attrs=read-write" in message
    assert "s3cret" not in message, message

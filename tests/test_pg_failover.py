"""A supervisor on a multi-host DSN follows a promoted standby under load, losing no job that
synchronous replication acknowledged, and never takes a read-only server for the primary.

The load test is a web app enqueuing one job per commit through a multi-host DSN and a
supervisor draining them through another (both libpq forms, each naming the primary and its
standby). Mid-load the primary dies (``pg_ctl stop -m immediate``) and, once the children have
seen it go and been turned away by the read-only standby, the standby is promoted, as a
failover tool would. The enqueuer retries every failed commit as a new job and counts only the
commits it saw succeed. Printed: when the children noticed, when jobs ran again, how many
acknowledged jobs never ran, how many ran twice. Then the old primary comes back read-only,
first in the supervisor's DSN: reconnecting children and the CLI pass over it.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime

import psycopg2
import pytest

import jobrunner
from helpers import HERE, free_port, wait_for
from jobrunner.backends import timeouts
from jobrunner.backends.pgmq.connection import connect
from jobrunner.errors import ConfigError, ServerUnreachable
from jobrunner.process.child import MAX_RECONNECT_DELAY
from replication_support import ReplicatedPostgres
from supervisor_support import supervise  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow

#: Seconds from the kill until the children notice, at most: what keepalive and the TCP user
#: timeout guarantee when a host vanishes (here its host stays up and closes the connections).
NOTICE_BOUND = timeouts.HUNG_SERVER_BOUND
#: Seconds from the promotion until jobs run again, at most: a child waits up to
#: MAX_RECONNECT_DELAY between two tries, and each try may spend CONNECT_TIMEOUT on each of the
#: two hosts (libpq applies it per host).
RECOVERY_BOUND = MAX_RECONNECT_DELAY + 2 * timeouts.CONNECT_TIMEOUT
#: Seconds between two enqueues of the test's web app: a commit is nearly always in flight.
ENQUEUE_INTERVAL = 0.01
#: Runs wanted before the kill and after the promotion.
RUNS_EACH_SIDE = 100
#: The jobs committed while the link is stalled: how many, their first n, their delay (s).
BATCH, BATCH_FIRST, BATCH_DELAY = 50, 1_000_000, 5


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


class Sender(jobrunner.Worker):
    """The test's side of failover_app's Stamp: same name, the queue set per test."""

    enqueuer = jobrunner.PgEnqueuer
    name = "Stamp"


class Enqueuer(threading.Thread):
    """Enqueues job n = 0, 1, 2 ..., one per commit, as a web app would: a failed commit
    (the job may or may not have landed) is retried as a new job, and only commits that
    returned count as acknowledged."""

    def __init__(self, dsn):
        super().__init__(daemon=True)
        self.dsn = dsn
        self.acked = {}            # n -> time.time() its commit returned
        self.failures = 0
        self.stopping = threading.Event()

    def run(self):
        conn, n = None, 0
        while not self.stopping.is_set():
            try:
                if conn is None:
                    conn = psycopg2.connect(self.dsn, connect_timeout=2)
                Sender.enqueue(conn, {"n": n})
                conn.commit()
                self.acked[n] = time.time()
            except psycopg2.Error:
                self.failures += 1
                if conn is not None:
                    conn.close()
                conn = None
            n += 1
            self.stopping.wait(ENQUEUE_INTERVAL)
        if conn is not None:
            conn.close()

    def stop(self):
        self.stopping.set()
        self.join(10)


class StalledBatch(threading.Thread):
    """One commit of ``BATCH`` jobs made while the link to the standby is stalled, delayed so
    that none can run before the primary dies: acknowledged at once with asynchronous
    replication, left waiting for the standby with synchronous replication."""

    ids = range(BATCH_FIRST, BATCH_FIRST + BATCH)

    def __init__(self, dsn):
        super().__init__(daemon=True)
        self.dsn = dsn
        self.outcome = None          # "acknowledged", or the error its commit raised

    def run(self):
        conn = psycopg2.connect(self.dsn, connect_timeout=2)
        try:
            for n in self.ids:
                Sender.enqueue_in(conn, BATCH_DELAY, {"n": n})
            conn.commit()
            self.outcome = "acknowledged"
        except psycopg2.Error as exc:
            self.outcome = type(exc).__name__
        finally:
            conn.close()


def runs(path):
    """[(n, epoch time)] of every run failover_app recorded."""
    try:
        with open(path) as handle:
            return [(int(f[1]), float(f[3])) for f in (line.split() for line in handle)
                    if len(f) == 4 and f[0] == "ran"]
    except FileNotFoundError:
        return []


def runs_since(path, since):
    return [n for n, at in runs(path) if at > since]


def first_log_time(log, text):
    """Epoch time of the first log line holding ``text`` (lines open with the UTC time,
    ``2024-01-31T12:00:00.123Z``)."""
    for line in log.splitlines():
        if text in line:
            return datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
    raise AssertionError(f"{text!r} not in the log:\n{log[-3000:]}")


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
    Sender.queue = queue
    env = {"JOBRUNNER_PG_DSN": cluster.dsn(), "TEST_QUEUE": queue, "JOBRUNNER_LOG_LEVEL": "INFO"}
    sv = supervise("failover_app", "--processes", "2", "--timeout-grace", "0.5", env=env)
    sv.wait_workers(2, 20)
    # The web app's DSN names the standby first: read-write makes libpq pass over it.
    enqueuer = Enqueuer(cluster.dsn(uri=False, standby_first=True))
    enqueuer.start()
    try:
        wait_for(lambda: len(runs(sv.out)) >= RUNS_EACH_SIDE, 30, 0.05, message="jobs running")
        batch = _commit_while_stalled(cluster) if stalled else None
        cluster.stop_primary()
        # A failover tool promotes once the primary is seen gone; here, once the children
        # saw it and the standby, still read-only, turned their reconnection away.
        sv.wait_log("session is read-only", 15)
        cluster.promote()
        wait_for(lambda: len(runs_since(sv.out, cluster.promoted_at)) >= RUNS_EACH_SIDE, 30,
                 0.05, message="jobs run after the promotion; log:\n" + sv.log()[-3000:])
    finally:
        enqueuer.stop()
    if batch is not None:
        batch.join(10)
    figures = _settle_and_count(sv, cluster, enqueuer, queue, batch)
    print(f"\npg failover ({'sync' if cluster.synchronous else 'async'}"
          f"{', link stalled' if stalled else ''}): "
          + ", ".join(f"{key} {value}" for key, value in figures.items()))
    assert figures["noticed s"] <= NOTICE_BOUND, figures
    assert figures["resumed after promotion s"] <= RECOVERY_BOUND, figures
    if cluster.synchronous:
        assert batch.outcome != "acknowledged"     # it waited for the standby, in vain
        assert figures["lost"] == 0, figures
    elif batch is not None:                        # acknowledged, never on the standby
        assert (batch.outcome, figures["lost from the batch"]) == ("acknowledged", BATCH)
    _old_primary_back_read_only(sv, cluster)


def _commit_while_stalled(cluster):
    """Stall the link, then commit a batch of jobs; return once the commit was acknowledged
    (async) or is seen waiting for the standby (sync)."""
    cluster.stall_replication()
    batch = StalledBatch(cluster.dsn())
    batch.start()
    if cluster.synchronous:
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
        wait_for(lambda: cluster.sql(cluster.primary, waiting)[0][0] > 0, 15, 0.02,
                 message="commits waiting for the standby")
    else:
        batch.join(15)
    return batch


def _settle_and_count(sv, cluster, enqueuer, queue, batch):
    """Wait until every job is settled on the new primary; the figures of the failover."""
    acked = set(enqueuer.acked)
    if cluster.synchronous:
        wait_for(lambda: acked <= {n for n, _ in runs(sv.out)}, 30, 0.05,
                 message="every acknowledged job to run")
    table = f'pgmq."q_{queue}"'
    wait_for(lambda: cluster.sql(cluster.standby, f"SELECT count(*) FROM {table}") == [(0,)],
             30, 0.1, message="the queue on the new primary drained")
    counts = {}
    for n, _ in runs(sv.out):
        counts[n] = counts.get(n, 0) + 1
    after_promotion = {n for n, at in enqueuer.acked.items() if at > cluster.promoted_at}
    assert after_promotion and after_promotion <= set(counts)     # it carries on
    if batch is not None and batch.outcome == "acknowledged":
        acked |= set(StalledBatch.ids)
    killed, promoted = cluster.failed_over_at, cluster.promoted_at
    resumed = min(at for _, at in runs(sv.out) if at > promoted)
    lost = sorted(acked - set(counts))
    return {"acknowledged": len(acked), "failed enqueues": enqueuer.failures,
            "stalled batch": batch.outcome if batch else "-",
            "noticed s": round(first_log_time(sv.log(), "lost the backend connection")
                               - killed, 2),
            "promoted s": round(promoted - killed, 2),
            "resumed s": round(resumed - killed, 2),
            "resumed after promotion s": round(resumed - promoted, 2),
            "lost": len(lost), "lost from the batch": sum(n >= BATCH_FIRST for n in lost),
            "lost from the stream": [n for n in lost if n < BATCH_FIRST][:30],
            "duplicates": sum(c - 1 for c in counts.values())}


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


def test_an_invalid_multi_host_dsn_is_shown_with_its_password_masked():
    dsn = "host=db1,db2 port=5432,5433 password=s3cret target_session_attrs=read-write oops"
    with pytest.raises(ConfigError) as raised:
        connect(dsn)
    message = str(raised.value)
    assert "host=db1,db2 port=5432,5433 password=*** target_session_attrs=read-write" in message
    assert "s3cret" not in message, message

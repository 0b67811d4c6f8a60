"""Sidekiq 7.3 and 8.1 beside jobrunner: what they wrote (recorded), and what they read of ours.

``tests/data/sidekiq/<version>/recorded.json`` holds what real Sidekiq 7.3.10 and 8.1.7 wrote
to Redis (``docs/sidekiq-versions.md`` says how it was recorded): a heartbeat with a busy job,
the retry and dead sets after jobs with ``retry``/``retry_for`` options failed, the jobs as
pushed, and the Metrics keys. The first tests feed those through jobrunner's own code; the
others read what jobrunner writes the way 7.x's and 8.x's API and Web UI read it (described
from their source: ``ProcessSet#each``, ``Process#queues``, ``WorkSet#each``,
``Metrics::Query``), in Python of our own.
"""

import datetime
import json
import os
import signal

import pytest
import redis

import jobrunner
from jobrunner.backends.sidekiq import heartbeat, inspector, payload
from jobrunner.backends.sidekiq.enqueue import SidekiqEnqueuer
from jobrunner.backends.sidekiq.housekeeper import SidekiqHousekeeper
from jobrunner.backends.sidekiq.metrics import MetricsWriter, metric_keys
from jobrunner.backends.sidekiq.versions import SidekiqVersion
from jobrunner.errors import ConfigError
from jobrunner.lifecycle import Bury, Discard, RetryLater, after_failure
from jobrunner.process.history import DURATION_BOUNDS_MS, ClassCounts, bucket_of
from jobrunner.process.housekeeper import _REMOTE_SIGNALS
from jobrunner.process.signals import DUMP_STACK
from jobrunner.process.state import RunningJob, SupervisorState
from jobrunner.retry import sidekiq_delay

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "sidekiq")
RECORDED = ("7.3", "8.1")
IDENTITY = "testhost:100:0123456789ab"


def recorded(version):
    with open(os.path.join(DATA, version, "recorded.json")) as f:
        return json.load(f)


class FailJob(jobrunner.Worker):
    """The recorded Ruby class as a Python worker: Sidekiq's default of 25 retries."""

    enqueuer = SidekiqEnqueuer
    queue = "mail"

    def handle(self, args):
        raise RuntimeError(args)


@pytest.fixture
def client(redis_url):
    conn = redis.Redis.from_url(redis_url, decode_responses=True)
    yield conn
    conn.close()


def label(raw):
    """What the recording named a job by: its first argument."""
    return json.loads(raw)["args"][0]


# -- what 7.3 and 8.1 wrote, through jobrunner's code ----------------------------------------

@pytest.mark.parametrize("version", RECORDED)
def test_a_recorded_ruby_process_reads_with_its_busy_job_and_thread_count(client, version):
    data = recorded(version)
    identity = data["identity"]
    client.sadd("processes", identity)
    client.hset(identity, mapping=data["heartbeat"])
    client.hset(identity + ":work", mapping=data["work"])
    (proc,) = inspector.processes(client)
    assert (proc["identity"], proc["concurrency"], proc["busy"]) == (identity, 3, 1)
    assert proc["queues"] == ["default"] and proc["version"] == data["sidekiq_version"]
    (tid, entry), = data["work"].items()
    job = json.loads(json.loads(entry)["payload"])
    assert proc["running"] == [{"child": tid, "queue": "default", "worker": "BusyJob",
                                "job_id": job["jid"], "args": ["busy"],
                                "run_at": json.loads(entry)["run_at"]}]
    assert not data["workers_key_exists"]          # 7.0 on write only ``:work``
    assert inspector.stats(client)["totals"]["busy"] == 1


def test_a_sidekiq_6_4_process_reads_with_its_busy_job_from_its_workers_hash(client):
    # the shapes of ``reference/sidekiq-wire.md`` §2-3 (verified against 6.4.1)
    identity = "vm:13835:34fe0d4a6529"
    job = ('{"retry":true,"queue":"default","class":"RecordJob","args":["x"],'
           '"jid":"2264d504330d5325cf34701f","created_at":1795848798.1936784}')
    client.sadd("processes", identity)
    client.hset(identity, mapping={"info": json.dumps({"hostname": "vm", "pid": 13835,
                                                       "concurrency": 5, "queues": ["default"],
                                                       "started_at": 1795848790.5}),
                                   "busy": 1, "beat": 1795848835.2, "quiet": "false"})
    client.hset(identity + ":workers", "a7f", json.dumps(
        {"queue": "default", "payload": job, "run_at": 1795848835}))
    (proc,) = inspector.processes(client)
    assert proc["concurrency"] == 5 and proc["queues"] == ["default"] and proc["version"] is None
    assert [(r["child"], r["worker"], r["job_id"]) for r in proc["running"]] == [
        ("a7f", "RecordJob", "2264d504330d5325cf34701f")]


@pytest.mark.parametrize("version", RECORDED)
def test_recorded_retry_and_dead_entries_parse_with_their_times_in_seconds(version):
    data = recorded(version)
    for key in ("retry", "dead"):
        for raw, score in data[key]:
            job = payload.parse(raw, "default")
            item = json.loads(raw)
            assert job.problem is None and job.worker_name == "FailJob" and job.attempt == 2
            failed = job.first_failed_at if "retry_for" in item else \
                payload.read_time(item["failed_at"])
            # 8.1 writes milliseconds (integers), 7.3 float seconds: both read as seconds
            assert isinstance(item["failed_at"], int if version == "8.1" else float)
            created = payload.read_time(item["created_at"])
            assert 0 <= failed - created < 5
            if key == "dead":
                assert 0 <= score - failed < 5
            else:
                assert 15 <= score - failed < 40           # the first backoff, 15-24 s + jitter


@pytest.mark.parametrize("version", RECORDED)
def test_jobrunner_decides_a_first_failure_as_the_recorded_sidekiq_did(version):
    data = recorded(version)
    rule = SidekiqVersion.parse(data["sidekiq_version"])
    where = {label(raw): "retry" for raw, _ in data["retry"]}
    where.update({label(raw): "dead" for raw, _ in data["dead"]})
    decided = {}
    for raw in data["pushed"]["queue:default"]:
        if json.loads(raw)["class"] != "FailJob":
            continue
        job = payload.parse(raw, "default", rule)
        now = payload.read_time(json.loads(raw)["created_at"]) + 0.1
        decision = after_failure(job, FailJob, sidekiq_delay, now=now)
        decided[label(raw)] = {RetryLater: "retry", Bury: "dead", Discard: "dropped"}[
            type(decision)]
        assert decided[label(raw)] == where.get(label(raw), "dropped"), label(raw)
    # retry_for: 0 is over at the first failure; retry: false wins over any window
    assert decided["retry_for-0"] == "dead"
    assert decided["retry-false-retry_for-3600"] == "dropped"
    # 8.1: the window replaces the count; 7.3: both must allow a retry
    assert decided["retry-0-retry_for-3600"] == ("retry" if version == "8.1" else "dead")


@pytest.mark.parametrize("version", RECORDED)
def test_a_recorded_retry_with_a_window_retries_until_it_closes(version):
    data = recorded(version)
    rule = SidekiqVersion.parse(data["sidekiq_version"])
    (raw,) = [raw for raw, _ in data["retry"] if label(raw) == "retry_for-3600"]
    job = payload.parse(raw, "default", rule)
    assert job.retry_for == 3600.0 and job.window_only == (version == "8.1")
    first = job.first_failed_at
    assert isinstance(after_failure(job, FailJob, sidekiq_delay, now=first + 3599), RetryLater)
    assert isinstance(after_failure(job, FailJob, sidekiq_delay, now=first + 3600), Bury)


@pytest.mark.parametrize("version", RECORDED)
def test_recorded_pushes_keep_their_millisecond_or_second_times(version):
    data = recorded(version)
    for raw in data["pushed"]["queue:default"] + data["pushed"]["queue:parked"]:
        item = json.loads(raw)
        job = payload.parse(raw, "default")
        assert job.enqueued_at == pytest.approx(payload.read_time(item["created_at"]), abs=1)
        if version == "8.1":
            assert isinstance(item["created_at"], int) and item["created_at"] > 1e12
    # a class Ruby knows only by name still gets the client's ``retry: true``
    (string_class,) = [json.loads(r) for r in data["pushed"]["queue:parked"]
                       if json.loads(r)["class"] == "RubyOnlyJob"]
    assert string_class["retry"] is True


@pytest.mark.parametrize("version", RECORDED)
def test_the_metric_keys_are_the_ones_the_recorded_sidekiq_wrote(version):
    data = recorded(version)
    major = SidekiqVersion.parse(data["sidekiq_version"]).metrics_format
    wanted = set(data["metrics"]) | {key for key in data["histograms"] if "OkJob" in key}
    at = datetime.datetime.fromisoformat(data["recorded_at"]).timestamp()
    minutes = [int(at // 60) * 60 - 60 * back for back in range(10)]
    found = [minute for minute in minutes
             if {*metric_keys(major, "OkJob", minute)[0], metric_keys(major, "OkJob", minute)[1]}
             == wanted]
    assert found, (wanted, [metric_keys(major, "OkJob", m) for m in minutes])
    assert data["metrics"][metric_keys(major, "OkJob", found[0])[0][0]]["OkJob|p"] == "3"
    assert data["histograms"][metric_keys(major, "OkJob", found[0])[1]][0] == 3


# -- what jobrunner writes, read as 7.x and 8.x read it ----------------------------------------

def ruby_processes(conn, version):
    """``Sidekiq::ProcessSet#each`` as 7.3 and 8.1 read a process: 8.1.2+ takes
    ``concurrency`` from the hash (``.to_i``, so 0 when absent), 7.3 from ``info``;
    ``Process#queues`` from ``capsules`` (each one's ``weights`` keys) when present."""
    seen = []
    for identity in sorted(conn.smembers("processes")):
        info, concurrency, busy = conn.hmget(identity, "info", "concurrency", "busy")
        if info is None:
            continue
        process = json.loads(info)
        if version == "8.1":
            process["concurrency"] = int(concurrency or 0)
            if process.get("capsules"):
                process["queues"] = list(dict.fromkeys(
                    q for cap in process["capsules"].values() for q in cap["weights"]))
        process["busy"] = int(busy or 0)
        seen.append(process)
    return seen


def ruby_work(conn):
    """``Sidekiq::WorkSet#each`` (7.0 on): ``<identity>:work`` values, payload a JSON string."""
    found = []
    for identity in sorted(conn.smembers("processes")):
        for tid, value in conn.hgetall(identity + ":work").items():
            work = json.loads(value)
            found.append((identity, tid, work["queue"], json.loads(work["payload"]),
                          work["run_at"]))
    return found


def busy_state(job_id):
    running = RunningJob(child_id=IDENTITY + ":101", job_id=job_id, worker="FailJob",
                         queue="mail", started_at=1700000100.7)
    return SupervisorState(identity=IDENTITY, hostname="testhost", pid=100,
                           started_at=1700000000.5, queues=["mail", "slow"], concurrency=2,
                           busy=(running,), children=(IDENTITY + ":101",))


@pytest.mark.parametrize("version", RECORDED)
def test_a_jobrunner_heartbeat_reads_as_sidekiq_7_and_8_read_it(client, version):
    (jid,) = FailJob.enqueue_batch(client, [{"n": 1}])
    keeper = SidekiqHousekeeper(client, IDENTITY)
    keeper.beat(busy_state(jid))
    (process,) = ruby_processes(client, version)
    assert process["concurrency"] == 2 and process["busy"] == 1     # not "0 threads"
    assert process["queues"] == ["mail", "slow"]
    assert process["version"] == f"jobrunner {jobrunner.__version__}"   # not "Unknown"
    assert process["embedded"] is False          # its Quiet and Stop buttons are offered
    ((identity, tid, queue, job, run_at),) = ruby_work(client)
    assert (identity, tid, queue, job["jid"], job["class"]) == (IDENTITY, "101", "mail", jid,
                                                                 "FailJob")
    assert isinstance(run_at, int)


def test_a_remote_ttin_is_a_stack_dump_for_the_supervisor(client):
    keeper = SidekiqHousekeeper(client, IDENTITY)
    client.lpush(IDENTITY + "-signals", "TTIN")     # Process#dump_threads
    assert keeper.tick(busy_state("j")) == ["TTIN"]
    assert _REMOTE_SIGNALS["TTIN"] == DUMP_STACK == signal.SIGUSR2
    assert _REMOTE_SIGNALS["TTIN"] != signal.SIGTTIN   # a local kill -TTIN still adds a child


def query_minute(conn, major, minute, worker):
    """``Metrics::Query#for_job`` for one minute: the counts and the histogram."""
    t = datetime.datetime.fromtimestamp(minute, datetime.timezone.utc)
    if major == 8:
        key, gram = f"j|{t:%y%m%d}|{t.hour}:{t.minute:02d}", f"h|{worker}-{t.day}-{t.hour}:{t.minute}"
    else:
        key, gram = f"j|{t:%Y%m%d}|{t.hour}:{t.minute}", f"{worker}-{t:%d}-{t:%H}:{t.minute}"
    counts = {field.split("|")[1]: int(value) for field, value in conn.hgetall(key).items()
              if field.split("|")[0] == worker}
    fetch = sum((["GET", "u16", f"#{i}"] for i in range(26)), [])
    return counts, conn.execute_command("BITFIELD_RO", gram, *fetch)


def test_class_counts_keep_runs_failures_and_the_time_of_successes():
    counts = ClassCounts(clock=lambda: 600.0)
    counts.done("sidekiq", "done", "A", 0.25)
    counts.done("sidekiq", "retry", "A", 9.0)
    counts.done("sidekiq", "requeued", "A", 1.0)     # not a run
    counts.done("sidekiq", "done", "A", 2.0)
    buckets = [0] * len(DURATION_BOUNDS_MS)
    buckets[bucket_of(250)] = buckets[bucket_of(2000)] = 1
    assert counts.recent_classes("sidekiq") == {600: {"A": [3, 1, 2250, buckets]}}
    assert counts.recent("sidekiq") == {600: (3, 1)}
    assert (bucket_of(19), bucket_of(20), bucket_of(10 ** 9)) == (0, 1, 25)


@pytest.mark.parametrize("major", (7, 8))
def test_metrics_add_what_changed_once_and_read_as_the_metrics_tab_reads_them(client, major):
    minute = 1796198640          # 2026-12-02 08:04 UTC
    buckets = [2] + [0] * 24 + [1]
    classes = {minute: {"FailJob": [5, 2, 300, buckets]}}
    writer = MetricsWriter(client, IDENTITY, SidekiqVersion(major, 1))
    writer.write(classes)
    writer.write(classes)                                         # unchanged: nothing added
    MetricsWriter(client, IDENTITY, SidekiqVersion(major, 1)).write(classes)   # a new keeper
    counts, gram = query_minute(client, major, minute, "FailJob")
    assert counts == {"p": 5, "f": 2, "ms": 300} and gram == buckets
    writer.write({minute: {"FailJob": [6, 2, 340, [3] + [0] * 24 + [1]]}})
    counts, gram = query_minute(client, major, minute, "FailJob")
    assert counts == {"p": 6, "f": 2, "ms": 340} and gram[0] == 3
    if major == 8:    # the ten-minute rollup of 08:00-08:09
        assert client.hgetall("j|261202|8:0") == {"FailJob|p": "6", "FailJob|f": "2",
                                                   "FailJob|ms": "340"}
        assert 0 < client.ttl("j|261202|8:0") <= 3 * 24 * 3600
    assert 0 < client.ttl(metric_keys(major, "FailJob", minute)[0][0]) <= 8 * 3600


def test_sidekiq_6_gets_no_metrics_keys(client):
    MetricsWriter(client, IDENTITY, SidekiqVersion(6, 4)).write(
        {1796198640: {"FailJob": [1, 0, 5, [1] + [0] * 25]}})
    assert client.keys("*") == []


# -- settings, retry_for rules, stubs ---------------------------------------------------------

def test_the_sidekiq_version_setting_is_checked():
    assert str(SidekiqVersion.parse(None)) == "8.1" and str(SidekiqVersion.parse("7.3.10")) == "7.3"
    assert jobrunner.config.resolve({"sidekiq_version": "7.3"}).sidekiq_version == "7.3"
    for bad in ("5.0", "eight", "9.0"):
        with pytest.raises(ConfigError):
            jobrunner.config.resolve({"sidekiq_version": bad})
        with pytest.raises(ConfigError):
            SidekiqVersion.parse(bad)


def test_retry_false_wins_over_retry_for_and_junk_windows_are_ignored():
    for raw in ('{"class":"FailJob","args":[],"retry":false,"retry_for":60}',
                '{"class":"FailJob","args":[],"retry_for":"60"}',
                '{"class":"FailJob","args":[],"retry_for":true}'):
        assert payload.parse(raw, "q").retry_for is None
    job = payload.parse('{"class":"FailJob","args":[],"retry":false,"retry_for":60}', "q")
    assert isinstance(after_failure(job, FailJob, sidekiq_delay, now=0.0), Discard)


def test_a_stub_for_a_ruby_class_writes_no_retry_unless_it_sets_one():
    class Resize(jobrunner.Worker):               # no handle: Ruby runs it
        enqueuer = SidekiqEnqueuer

    class ResizeFew(Resize):
        max_retries = 3

    def item(worker):
        _, (raw,) = payload.client_payloads(worker, ["1"], 1.5)
        return json.loads(raw)

    assert "retry" not in item(Resize)
    assert item(ResizeFew)["retry"] == 3
    assert item(FailJob)["retry"] == 25           # a worker of ours: always written
    assert heartbeat.capsule_mode({"a": 0}) == "strict"
    assert heartbeat.capsule_mode({"a": 1, "b": 1}) == "random"
    assert heartbeat.capsule_mode({"a": 2, "b": 1}) == "weighted"

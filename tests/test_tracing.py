"""OpenTelemetry tracing (jobrunner.contrib.opentelemetry): the enqueue's PRODUCER span is the
parent of the run's CONSUMER span, in one trace from the caller to the child, on every backend;
a failed run records its exception. The SDK's in-memory exporter records this process's spans,
and the supervised app (apps/otel_app.py) writes its children's spans to a file."""

import json
import os
import uuid

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import jobrunner
import jobrunner.testing
from jobrunner import worker as worker_module
from jobrunner.contrib.opentelemetry import TracingMiddleware, instrument, uninstrument
from helpers import read_lines, wait_for
from supervisor_support import supervise  # noqa: F401 (a fixture)


@pytest.fixture
def recorded():
    """A provider whose spans this test reads; tracing of enqueues off again afterwards."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    uninstrument()


class Mail(jobrunner.Worker):
    enqueuer = jobrunner.SidekiqEnqueuer
    queue = "mail"
    max_retries = 0

    def handle(self, args):
        if args.get("fail"):
            raise ValueError("no such mailbox")


def by_kind(spans, kind):
    return [span for span in spans if span.kind == kind]


def test_without_instrument_an_enqueue_carries_nothing_and_costs_one_check():
    assert worker_module.around_enqueue is None
    with jobrunner.testing.fake() as jobs:
        Mail.enqueue(None, {"n": 1})
    assert jobs.enqueued(Mail)[0].trace_context is None


def test_a_run_is_a_child_of_its_enqueue_and_a_failure_is_recorded(recorded):
    provider, exporter = recorded
    registry = jobrunner.Registry()
    registry.register(Mail)
    instrument(registry, tracer_provider=provider)
    instrument(registry, tracer_provider=provider)        # twice: one middleware still
    assert sum(isinstance(m, TracingMiddleware) for m in registry.middleware) == 1
    request = provider.get_tracer("test")
    with jobrunner.testing.fake(registry, raise_errors=False) as jobs:
        with request.start_as_current_span("POST /signup") as parent:
            Mail.enqueue(None, {"n": 1})
            Mail.enqueue_batch(None, [{"fail": True}, {"n": 3}])
        carried = jobs.enqueued(Mail)[0].trace_context
        assert carried["traceparent"].split("-")[1] == format(parent.context.trace_id, "032x")
        jobs.drain()
    spans = exporter.get_finished_spans()
    one, batch = by_kind(spans, SpanKind.PRODUCER)
    assert one.parent.span_id == parent.context.span_id and one.name == "send mail"
    assert one.attributes["messaging.message.id"] == jobs.all[0].id
    assert batch.attributes["messaging.batch.message_count"] == 2
    runs = by_kind(spans, SpanKind.CONSUMER)
    assert [run.parent.span_id for run in runs] == [one.context.span_id,
                                                     batch.context.span_id,
                                                     batch.context.span_id]
    assert {run.context.trace_id for run in runs} == {parent.context.trace_id}
    assert [[link.context.span_id for link in run.links] for run in runs] == [
        [one.context.span_id], [batch.context.span_id], [batch.context.span_id]]
    ok, failed, _ = runs
    assert ok.name == "process mail" and ok.attributes["jobrunner.outcome"] == "done"
    assert ok.attributes["messaging.operation.type"] == "process"
    assert failed.status.status_code == StatusCode.ERROR
    assert [event.name for event in failed.events] == ["exception"]
    assert failed.events[0].attributes["exception.message"] == "no such mailbox"
    assert failed.attributes["jobrunner.outcome"] == "dead"


def test_a_carried_context_is_read_only_as_small_strings():
    from jobrunner.job import trace_context_of
    assert trace_context_of({"traceparent": "00-ab-cd-01"}) == {"traceparent": "00-ab-cd-01"}
    assert trace_context_of({"traceparent": ["<script>"], 3: "x"}) is None
    assert trace_context_of("00-ab-cd-01") is None
    assert trace_context_of({"traceparent": "x" * 10_000}) is None


@pytest.mark.parametrize("backend", ["pgmq", "sidekiq"])
def test_the_trace_crosses_a_real_supervisor(supervise, backend, recorded, tmp_path, request):
    provider, exporter = recorded
    queue = "t_" + uuid.uuid4().hex[:10]
    spans_file = tmp_path / "spans.jsonl"
    if backend == "pgmq":
        dsn = request.getfixturevalue("pg_dsn")
        env, conn = {"JOBRUNNER_PG_DSN": dsn}, request.getfixturevalue("pg_conn")
    else:
        import redis
        url = request.getfixturevalue("redis_url")
        env, conn = {"JOBRUNNER_REDIS_URL": url}, redis.Redis.from_url(url)
    env.update(TEST_QUEUE=queue, TEST_SPANS=str(spans_file), TEST_BACKEND=backend)
    from apps import otel_app
    worker = otel_app.PgTraced if backend == "pgmq" else otel_app.RedisTraced
    worker = type(worker.__name__, (worker,), {"name": worker.name, "queue": queue})
    instrument(tracer_provider=provider)
    with provider.get_tracer("test").start_as_current_span("POST /order") as parent:
        worker.enqueue(conn, {"n": 1})
        worker.enqueue(conn, {"n": 2, "fail": True})
    if backend == "pgmq":
        conn.commit()
    sv = supervise("otel_app", "--processes", "1", env=env)

    def children_spans():
        lines = [json.loads(line) for line in read_lines(str(spans_file))]
        return lines if len([s for s in lines if s["kind"] == "CONSUMER"]) == 2 else None

    spans = wait_for(children_spans, timeout=20, message=f"two runs traced; {sv.log()[-2000:]}")
    sends = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.PRODUCER]
    runs = [s for s in spans if s["kind"] == "CONSUMER"]
    trace_id = format(parent.context.trace_id, "032x")
    assert {s["trace_id"] for s in spans} == {trace_id}
    assert [r["parent_id"] for r in runs] == [format(s.context.span_id, "016x") for s in sends]
    assert all(r["pid"] != os.getpid() and r["pid"] != sv.pid for r in runs)
    inner = [s for s in spans if s["name"] == "inside the job"]
    assert sorted(s["parent_id"] for s in inner) == sorted(r["span_id"] for r in runs)
    ok, failed = runs
    assert (ok["status"], failed["status"]) == ("UNSET", "ERROR")
    assert failed["events"] == ["exception"]
    assert ok["attributes"]["messaging.destination.name"] == queue
    assert ok["attributes"]["messaging.system"] == "jobrunner"


def test_on_pgmq_the_context_travels_in_the_headers_and_the_body_keeps_its_envelope(
        recorded, pg_conn, queue_name):
    provider, _ = recorded
    instrument(tracer_provider=provider)
    worker = type("PgCarried", (jobrunner.Worker,), {"enqueuer": jobrunner.PgEnqueuer,
                                                     "queue": queue_name})
    job_id = worker.enqueue(pg_conn, {"n": 1})
    with pg_conn.cursor() as cur:
        cur.execute(f'SELECT message, headers FROM pgmq."q_{queue_name}"')
        [(message, headers)] = cur.fetchall()
    pg_conn.rollback()
    assert message == {"metadata": {"id": job_id, "worker_name": "PgCarried"}, "args": {"n": 1}}
    assert set(headers) == {"trace_context"} and "traceparent" in headers["trace_context"]

"""A worker traced with OpenTelemetry, on the backend TEST_BACKEND names (pgmq by default); every
finished span is appended as one JSON line to TEST_SPANS (SimpleSpanProcessor: no thread to
lose across the fork)."""

import json
import os

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

import jobrunner
from jobrunner.contrib.opentelemetry import instrument

QUEUE = os.environ.get("TEST_QUEUE", "default")
SPANS = os.environ.get("TEST_SPANS", "/dev/null")


class JsonLines(SpanExporter):
    def export(self, spans):
        with open(SPANS, "a") as out:
            for span in spans:
                parent = span.parent
                out.write(json.dumps({
                    "name": span.name, "kind": span.kind.name, "pid": os.getpid(),
                    "trace_id": format(span.context.trace_id, "032x"),
                    "span_id": format(span.context.span_id, "016x"),
                    "parent_id": format(parent.span_id, "016x") if parent else None,
                    "status": span.status.status_code.name,
                    "events": [event.name for event in span.events],
                    "attributes": dict(span.attributes)}) + "\n")
        return SpanExportResult.SUCCESS


provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(JsonLines()))
tracer = provider.get_tracer("otel_app")


class TracedJob:
    def handle(self, args):
        with tracer.start_as_current_span("inside the job"):
            if args.get("fail"):
                raise ValueError(f"traced failure {args['n']}")


class PgTraced(TracedJob, jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer
    queue = QUEUE
    max_retries = 0


class RedisTraced(TracedJob, jobrunner.Worker):
    enqueuer = jobrunner.SidekiqEnqueuer
    queue = QUEUE
    max_retries = 0


registry = jobrunner.Registry()
registry.register(RedisTraced if os.environ.get("TEST_BACKEND") == "sidekiq" else PgTraced)
instrument(registry, tracer_provider=provider)

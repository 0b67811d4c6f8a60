"""OpenTelemetry tracing: a span around each enqueue and each run, one trace from the request to
the child that runs its job.

    from jobrunner.contrib.opentelemetry import instrument
    instrument(registry)      # in the code that enqueues and in the one the supervisor imports

Needs the ``otel`` extra (``opentelemetry-api``); the exporter is the application's own
(``opentelemetry-sdk`` and whatever it sends to). Names follow OpenTelemetry's messaging
semantic conventions:

- **enqueue**: a PRODUCER span ``send <queue>`` around the push, with ``messaging.system``
  ``jobrunner``, ``messaging.operation.type`` / ``.name`` ``send``,
  ``messaging.destination.name``, and ``messaging.message.id`` (one job) or
  ``messaging.batch.message_count`` (a batch). The span's context, injected by the global
  propagator (W3C ``traceparent``/``tracestate`` by default), travels in the job: the
  ``trace_context`` field of the Sidekiq payload, or of the pgmq message's headers.
- **run**: a CONSUMER span ``process <queue>`` around the job's middleware and ``handle``,
  a child of the carried context (so the request's trace shows its jobs) with a link to it as
  well (the conventions' way to name a message's creation context), current while the job runs (the job's own spans nest under it). It has ``messaging.operation.type`` /
  ``.name`` ``process``, the queue and id, ``jobrunner.worker``, ``jobrunner.attempt`` and
  ``jobrunner.outcome``; a failed run records its exception and has status ERROR.

Jobs written by producers that carry no context (Ruby Sidekiq, say) start a trace of their own.
With tracing off, an enqueue costs one check and a run nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

from opentelemetry import context, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from jobrunner import worker as worker_module
from jobrunner.job import Outcome

if TYPE_CHECKING:
    from jobrunner.job import Job
    from jobrunner.registry import Registry
    from jobrunner.worker import Worker

SYSTEM = "jobrunner"
SCOPE = "jobrunner"


def instrument(registry: Registry | None = None,
               tracer_provider: trace.TracerProvider | None = None) -> None:
    """Trace every enqueue from this process, and every run of ``registry``'s jobs (when given:
    the registry a supervisor runs). Call it once, before the supervisor starts."""
    tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
    worker_module.around_enqueue = _Producer(tracer)
    if registry is not None and not any(isinstance(m, TracingMiddleware)
                                        for m in registry.middleware):
        registry.add_middleware(TracingMiddleware(tracer_provider))


def uninstrument() -> None:
    """Stop tracing enqueues (middleware already added to a registry stays)."""
    worker_module.around_enqueue = None


class _Producer:
    """The enqueue side: ``around_enqueue`` of ``jobrunner.worker``."""

    def __init__(self, tracer: trace.Tracer):
        self.tracer = tracer

    def __call__(self, worker: type[Worker], count: int,
                 push: Callable[[Mapping[str, str] | None], list[str]]) -> list[str]:
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM, "messaging.operation.type": "send",
            "messaging.operation.name": "send", "messaging.destination.name": worker.queue,
            "jobrunner.worker": worker.name}
        if count != 1:
            attributes["messaging.batch.message_count"] = count
        with self.tracer.start_as_current_span(f"send {worker.queue}", kind=SpanKind.PRODUCER,
                                               attributes=attributes) as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            ids = push(carrier or None)
            if count == 1 and ids:
                span.set_attribute("messaging.message.id", ids[0])
            return ids


class TracingMiddleware:
    """The run side: a CONSUMER span around each job, current while it runs (one job at a time
    per child, so one span at a time)."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None):
        self._provider = tracer_provider
        self._tracer: trace.Tracer | None = None
        self._span: trace.Span | None = None
        self._token: Any = None       # what context.attach gave, for detach

    def before(self, job: Job) -> None:
        if self._tracer is None:     # made in the child: a provider set up after the fork
            self._tracer = trace.get_tracer(SCOPE, tracer_provider=self._provider)
        parent = propagate.extract(job.trace_context or {})
        created = trace.get_current_span(parent).get_span_context()
        self._span = self._tracer.start_span(
            f"process {job.queue}", context=parent, kind=SpanKind.CONSUMER,
            links=[trace.Link(created)] if created.is_valid else None, attributes={
                "messaging.system": SYSTEM, "messaging.operation.type": "process",
                "messaging.operation.name": "process", "messaging.destination.name": job.queue,
                "messaging.message.id": job.id or "", "jobrunner.worker": job.worker_name or "",
                "jobrunner.attempt": job.attempt})
        self._token = context.attach(trace.set_span_in_context(self._span, parent))

    def on_error(self, job: Job, error: BaseException) -> None:
        if self._span is not None:
            self._span.record_exception(error)
            self._span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))

    def after(self, job: Job, outcome: Outcome) -> None:
        span, token, self._span, self._token = self._span, self._token, None, None
        if span is None:
            return
        span.set_attribute("jobrunner.outcome", outcome.value)
        span.end()
        if token is not None:
            context.detach(token)

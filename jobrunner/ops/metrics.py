"""Prometheus metrics of one supervisor: what is counted, and the reading of queue numbers.

The endpoint that serves them from the supervisor's loop is ``metrics_server.py``.

Enable with ``--metrics-port N`` / ``JOBRUNNER_METRICS_PORT`` / ``Supervisor(metrics_port=N)``
(0: any free port, logged) and install the extra: ``pip install "jobrunner[metrics]"``. It
listens on 127.0.0.1 unless ``metrics_host`` (``--metrics-host``) says otherwise.

Where each number comes from:

    jobrunner_jobs_started_total{backend,queue,worker}          starts the children's slots show
    jobrunner_jobs_total{backend,queue,worker,outcome}          ``Done`` entries (done, retry,
        dead, discarded, requeued, error), plus outcome="lost" for a job whose child died
        under it (killed at its timeout, OOM, segfault): the housekeeper or the lease
        recovers such a job, and it counts as a failed attempt
    jobrunner_job_duration_seconds{backend,worker}              histogram of "done" durations
    jobrunner_child_exits_total{backend,kind,reason}            children that exited
    jobrunner_children / _busy_children / _pool_size{backend}   the supervisor's own records
    jobrunner_queue_waiting / _latency_seconds{backend,queue}   read from the backend
    jobrunner_jobs_scheduled / _retrying / _dead{backend}       read from the backend
    jobrunner_backend_up{backend}, jobrunner_queue_metrics_age_seconds{backend}

Design, and why (``docs/design.md``, "The metrics reader"):

- **No thread.** ``prometheus_client.start_http_server`` starts a thread, and a supervisor
  that forks must stay single-threaded. The listening socket is non-blocking and handled in
  the supervisor's ``select`` loop, like the children's pipes: a request is read, answered
  and closed without ever blocking that loop. ``prometheus_client`` is used only to keep the
  counters and to render the text format.
- **No backend connection in the supervisor.** Queue depth and latency must be read from
  Postgres/Redis, but the supervisor holds no connection, and a connect or query in its loop
  could stall signal handling and the policing of children for seconds. So a scrape that
  finds the queue numbers older than ``FRESH_SECONDS`` forks a short-lived *reader* process
  that opens its own connection (after the fork, as every child does), reads the numbers,
  writes them as one JSON line to a pipe and exits; the scrape's answer waits (in the loop,
  not blocking it) for that line, at most ``READ_TIMEOUT`` seconds, then goes out with the
  previous numbers and ``jobrunner_backend_up 0``. Nothing is read from the backends when
  nobody scrapes. The reader is reaped by the supervisor's ordinary ``waitpid(-1)`` loop,
  which ignores PIDs that are not its children's.
- **Nothing leaks into children.** An ``os.register_at_fork`` hook closes the listening and
  client sockets in every forked process, so workers never hold the port.
- Several supervisors against one backend each report the same queue numbers: aggregate
  those with ``max``, and the job counters with ``sum``.
"""

import logging
import time

from jobrunner.backends import make_backend

log = logging.getLogger("jobrunner.metrics")

#: Run-time histogram buckets, seconds: sub-second jobs up to the longest default timeouts.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0, 600.0, float("inf"))
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _prometheus():
    try:
        import prometheus_client
    except ImportError:
        from jobrunner.errors import ConfigError
        raise ConfigError("metrics need prometheus-client: pip install 'jobrunner[metrics]'") \
            from None
    return prometheus_client


# -- aggregation --------------------------------------------------------------------------------

class Metrics:
    """Counters fed by the children's pipe messages, plus gauges computed at render time.

    ``pools`` is a callable returning the supervisor's pools (for the child gauges); queue
    numbers come from ``update_queues`` (a reader's result). Pure bookkeeping: no I/O.
    """

    def __init__(self, pools=lambda: ()):
        client = _prometheus()
        self._client = client
        self.registry = client.CollectorRegistry(auto_describe=True)
        self.pools = pools
        self.started_total = client.Counter(
            "jobrunner_jobs_started", "Jobs a child started running.",
            ("backend", "queue", "worker"), registry=self.registry)
        self.finished_total = client.Counter(
            "jobrunner_jobs", "Job runs that ended, by outcome (lost: its child died under it).",
            ("backend", "queue", "worker", "outcome"), registry=self.registry)
        self.duration = client.Histogram(
            "jobrunner_job_duration_seconds", "Run time of one job run, in its child.",
            ("backend", "worker"), buckets=DURATION_BUCKETS, registry=self.registry)
        self.exits = client.Counter(
            "jobrunner_child_exits", "Children that exited, by kind and reason.",
            ("backend", "kind", "reason"), registry=self.registry)
        self.queues = {}           # backend -> {"queues": {...}, "totals": {...}, "at": epoch}
        self.backend_up = {}       # backend -> bool, from the last read
        self.registry.register(_StateCollector(self))

    def started(self, backend, queue, worker):
        """Count a job a child started (its slot showed it)."""
        self.started_total.labels(backend, _label(queue), _label(worker)).inc()

    def finished(self, backend, queue, worker, outcome, duration):
        """Count one run that ended with ``outcome``, and its ``duration`` in seconds (a value
        that is not a number of seconds is not observed: a child's pipe is not trusted)."""
        worker = _label(worker)
        self.finished_total.labels(backend, _label(queue), worker, _label(outcome)).inc()
        if isinstance(duration, (int, float)) and not isinstance(duration, bool) \
                and duration >= 0:
            self.duration.labels(backend, worker).observe(duration)

    def child_exited(self, backend, kind, running, kill_reason, code):
        """Count an exited child; a job it was running (a ``JobEntry``) counts as ``lost``."""
        if kill_reason:
            reason = kill_reason                       # timeout, heartbeat, shutdown
        elif code == 0:
            reason = "exit"
        else:
            reason = "crash"
        self.exits.labels(backend, kind, reason).inc()
        if running:
            self.finished_total.labels(backend, _label(running.queue), _label(running.worker),
                                       "lost").inc()

    def update_queues(self, result, now=None):
        """Take a reader's result: ``{backend: {"ok": bool, "queues": {...}, "totals": {...}}}``."""
        now = time.time() if now is None else now
        for backend, numbers in result.items():
            self.backend_up[backend] = bool(numbers.get("ok"))
            if numbers.get("ok"):
                self.queues[backend] = {"queues": numbers.get("queues") or {},
                                        "totals": numbers.get("totals") or {}, "at": now}

    def mark_down(self, backends):
        for backend in backends:
            self.backend_up[backend] = False

    def age(self, now=None):
        """Seconds since the oldest backend's queue numbers were read (inf when never)."""
        now = time.time() if now is None else now
        names = [p.backend_name for p in self.pools()] or list(self.queues)
        if not names or any(n not in self.queues for n in names):
            return float("inf")
        return max(now - self.queues[n]["at"] for n in names)

    def render(self):
        """The text exposition format, as bytes."""
        return self._client.generate_latest(self.registry)


def _label(value):
    return value if isinstance(value, str) and value else "unknown"


class _StateCollector:
    """Gauges computed when scraped: the supervisor's children and the last queue numbers."""

    def __init__(self, metrics):
        self.metrics = metrics

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily
        m = self.metrics
        children = GaugeMetricFamily("jobrunner_children", "Live worker children per backend.",
                                     labels=("backend",))
        busy = GaugeMetricFamily("jobrunner_busy_children",
                                 "Worker children running a job now.", labels=("backend",))
        size = GaugeMetricFamily("jobrunner_pool_size",
                                 "Children a backend's pools are meant to have.",
                                 labels=("backend",))
        per_backend = {}          # a backend's dedicated pools add to its numbers
        for pool in m.pools():
            counts = per_backend.setdefault(pool.backend_name, [0, 0, 0])
            counts[0] += len(pool.children)
            counts[1] += sum(1 for r in pool.children.values() if r.running)
            counts[2] += pool.size
        for backend, (live, running, wanted) in sorted(per_backend.items()):
            children.add_metric([backend], live)
            busy.add_metric([backend], running)
            size.add_metric([backend], wanted)
        yield from (children, busy, size)

        waiting = GaugeMetricFamily("jobrunner_queue_waiting",
                                    "Jobs ready to run now (queue depth).",
                                    labels=("backend", "queue"))
        latency = GaugeMetricFamily("jobrunner_queue_latency_seconds",
                                    "Age of the oldest ready job (0 when none waits).",
                                    labels=("backend", "queue"))
        sets = {key: GaugeMetricFamily(f"jobrunner_jobs_{key}", f"Jobs {key} in the backend.",
                                       labels=("backend",))
                for key in ("scheduled", "retrying", "dead")}
        up = GaugeMetricFamily("jobrunner_backend_up",
                               "1 when the last read of queue numbers succeeded.",
                               labels=("backend",))
        age = GaugeMetricFamily("jobrunner_queue_metrics_age_seconds",
                                "Seconds since the queue numbers were read.",
                                labels=("backend",))
        now = time.time()
        for backend, numbers in sorted(m.queues.items()):
            for queue, row in sorted(numbers["queues"].items()):
                waiting.add_metric([backend, queue], row.get("waiting") or 0)
                latency.add_metric([backend, queue], row.get("latency") or 0.0)
            for key, family in sets.items():
                value = numbers["totals"].get(key)
                if value is not None:
                    family.add_metric([backend], value)
            age.add_metric([backend], max(0.0, now - numbers["at"]))
        for backend, ok in sorted(m.backend_up.items()):
            up.add_metric([backend], 1 if ok else 0)
        yield from (waiting, latency, *sets.values(), up, age)


# -- reading queue numbers (in a reader process) -------------------------------------------------

def read_all(settings, pools, timeout=3):
    """``{backend: numbers}`` for ``pools`` (``(backend name, queues)`` pairs; a backend's
    dedicated pools add their queues to its entry). A backend that fails is
    ``{"ok": False, "error": ...}``."""
    wanted = {}
    for name, queues in pools:
        wanted.setdefault(name, {}).update(dict.fromkeys(queues))
    result = {}
    for name, queues in wanted.items():
        try:
            inspector = make_backend(name, settings).inspector(timeout, "jobrunner-metrics",
                                                                bounded=True)
            try:
                result[name] = dict(inspector.depths(list(queues)), ok=True)
            finally:
                inspector.close()
        except Exception as exc:
            result[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    return result

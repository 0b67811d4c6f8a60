"""Prometheus metrics of one supervisor, served from its own main loop (optional, off by default).

Enable with ``--metrics-port N`` / ``JOBRUNNER_METRICS_PORT`` / ``Supervisor(metrics_port=N)``
(0: any free port, logged) and install the extra: ``pip install "jobrunner[metrics]"``.

Where each number comes from:

    jobrunner_jobs_started_total{backend,queue,worker}          "start" messages on the pipes
    jobrunner_jobs_total{backend,queue,worker,outcome}          "done" messages (done, retry,
        dead, discarded, requeued, error), plus outcome="lost" for a job whose child died
        under it (killed at its timeout, OOM, segfault): the housekeeper or the lease
        recovers such a job, and it counts as a failed attempt
    jobrunner_job_duration_seconds{backend,worker}              histogram of "done" durations
    jobrunner_child_exits_total{backend,kind,reason}            children that exited
    jobrunner_children / _busy_children / _pool_size{backend}   the supervisor's own records
    jobrunner_queue_waiting / _latency_seconds{backend,queue}   read from the backend
    jobrunner_jobs_scheduled / _retrying / _dead{backend}       read from the backend
    jobrunner_backend_up{backend}, jobrunner_queue_metrics_age_seconds{backend}

Design, and why (``DESIGN.md`` §2, user pains 5 and 20):

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

import errno
import json
import logging
import os
import signal
import socket
import time
import weakref

from . import proc

log = logging.getLogger("jobrunner.metrics")

#: Queue numbers younger than this are served as they are; older ones are read again.
FRESH_SECONDS = 2.0
#: Longest wait for a reader process; then the scrape is answered with what is known.
READ_TIMEOUT = 4.0
#: A client that has not sent a whole request by then is dropped.
REQUEST_TIMEOUT = 5.0
#: Open client connections at most; more are refused (closed) at once.
MAX_CLIENTS = 16
#: Run-time histogram buckets, seconds: sub-second jobs up to the longest default timeouts.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0, 600.0, float("inf"))
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LIVE = weakref.WeakSet()       # servers whose sockets a forked process must close


def _close_in_child():
    for server in list(_LIVE):
        server.close(in_child=True)


os.register_at_fork(after_in_child=_close_in_child)


def _prometheus():
    try:
        import prometheus_client
    except ImportError:
        from .errors import ConfigError
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
        self.started = client.Counter(
            "jobrunner_jobs_started", "Jobs a child started running.",
            ("backend", "queue", "worker"), registry=self.registry)
        self.finished = client.Counter(
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

    def observe(self, pool_name, running, message):
        """Count one pipe message. ``running`` is the child's current "start" message (the
        one a "done" finishes), read before the supervisor clears it."""
        kind = message.get("t")
        if kind == "start":
            self.started.labels(pool_name, _label(message.get("queue")),
                                _label(message.get("worker"))).inc()
        elif kind == "done":
            start = running or {}
            worker = _label(start.get("worker"))
            self.finished.labels(pool_name, _label(start.get("queue")), worker,
                                 _label(message.get("outcome"))).inc()
            duration = message.get("duration")
            if isinstance(duration, (int, float)) and not isinstance(duration, bool) \
                    and duration >= 0:
                self.duration.labels(pool_name, worker).observe(duration)

    def child_exited(self, pool_name, kind, running, kill_reason, code):
        """Count an exited child; a job it was running counts as ``lost``."""
        if kill_reason:
            reason = kill_reason                       # timeout, heartbeat, shutdown
        elif code == 0:
            reason = "exit"
        else:
            reason = "crash"
        self.exits.labels(pool_name, kind, reason).inc()
        if running:
            self.finished.labels(pool_name, _label(running.get("queue")),
                                 _label(running.get("worker")), "lost").inc()

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
        names = [p.name for p in self.pools()] or list(self.queues)
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
        children = GaugeMetricFamily("jobrunner_children", "Live worker children per pool.",
                                     labels=("backend",))
        busy = GaugeMetricFamily("jobrunner_busy_children",
                                 "Worker children running a job now.", labels=("backend",))
        size = GaugeMetricFamily("jobrunner_pool_size", "Children a pool is meant to have.",
                                 labels=("backend",))
        for pool in m.pools():
            children.add_metric([pool.name], len(pool.children))
            busy.add_metric([pool.name], sum(1 for r in pool.children.values() if r.running))
            size.add_metric([pool.name], pool.size)
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

def read_pgmq(settings, queues, timeout=3):
    """Waiting, latency (per queue) and scheduled/retrying/dead (totals) of pgmq ``queues``."""
    import psycopg2
    from .backends.pgmq_admin import queue_stats
    conn = psycopg2.connect(settings.pg_dsn or "", connect_timeout=timeout,
                            application_name="jobrunner-metrics",
                            options=f"-c statement_timeout={int(timeout * 1000)}")
    conn.autocommit = True
    try:
        rows, totals = {}, {"scheduled": 0, "retrying": 0, "dead": 0}
        for queue in queues:
            try:
                row = queue_stats(conn, queue)
            except psycopg2.errors.UndefinedTable:
                row = {"waiting": 0, "latency": 0.0}      # no job was ever sent to it
            rows[queue] = {"waiting": row["waiting"], "latency": row["latency"]}
            for key in totals:
                totals[key] += row.get(key, 0)
        return {"ok": True, "queues": rows, "totals": totals}
    finally:
        conn.close()


def read_sidekiq(settings, queues, timeout=3):
    """LLEN and Sidekiq's latency of each queue; ZCARD of schedule, retry and dead."""
    from .backends.sidekiq_admin import client
    from .backends.sidekiq_payload import load_item, queue_key, read_time
    conn = client(settings.redis_url, timeout=timeout)
    try:
        pipe = conn.pipeline(transaction=False)
        for queue in queues:
            pipe.llen(queue_key(queue))
            pipe.lrange(queue_key(queue), -1, -1)
        for key in ("schedule", "retry", "dead"):
            pipe.zcard(key)
        *per_queue, scheduled, retrying, dead = pipe.execute()
        now = time.time()
        rows = {}
        for queue, length, tail in zip(queues, per_queue[::2], per_queue[1::2]):
            item = load_item(tail[0])[0] if tail else None
            enqueued = read_time(item.get("enqueued_at")) if isinstance(item, dict) else None
            rows[queue] = {"waiting": length, "latency": round(max(0.0, now - enqueued), 3)
                           if enqueued is not None else 0.0}
        return {"ok": True, "queues": rows,
                "totals": {"scheduled": scheduled, "retrying": retrying, "dead": dead}}
    finally:
        conn.close()


READERS = {"pgmq": read_pgmq, "sidekiq": read_sidekiq}


def read_all(settings, pools):
    """``{backend: numbers}`` for each pool; a backend that fails is ``{"ok": False, ...}``."""
    result = {}
    for name, queues in pools:
        try:
            result[name] = READERS[name](settings, list(queues))
        except Exception as exc:
            result[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    return result


# -- the HTTP endpoint in the supervisor's loop --------------------------------------------------

class _Client:
    def __init__(self, sock, now):
        self.sock = sock
        self.inbox = b""
        self.outbox = b""
        self.since = now
        self.waiting = False       # parked until the reader answers
        self.head_only = False


class MetricsServer:
    """A non-blocking ``/metrics`` endpoint driven by the supervisor's ``select`` loop.

    The supervisor calls ``watch()`` for the descriptors to add to its ``select`` and
    ``serve(readable, writable)`` with what came back, once per pass; it feeds ``observe`` and
    ``child_exited`` from its pipe messages. See the module docstring for the design.
    """

    def __init__(self, supervisor, port, host=""):
        self.supervisor = supervisor
        self.metrics = Metrics(pools=lambda: supervisor.pools)
        self.listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                      socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind((host, port))
        except OSError as exc:
            self.listener.close()
            from .errors import ConfigError
            raise ConfigError(f"cannot serve metrics on port {port}: {exc.strerror}") from None
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.clients = {}          # fd -> _Client
        self.reader = None         # (pid, read fd, started monotonic, buffer)
        self._pid = os.getpid()
        _LIVE.add(self)
        log.info("metrics: serving http://%s:%d/metrics", host or "0.0.0.0", self.port)

    # the supervisor's hooks

    def observe(self, record, message):
        self.metrics.observe(record.pool.name, record.running, message)

    def child_exited(self, record, code):
        self.metrics.child_exited(record.pool.name, record.kind, record.running,
                                  record.kill_reason, code)

    def watch(self):
        """(descriptors to read, descriptors to write) for the supervisor's ``select``."""
        if self.listener is None:
            return [], []
        readers = [self.listener.fileno()] + [fd for fd, c in self.clients.items()
                                              if not c.outbox]
        if self.reader is not None:
            readers.append(self.reader[1])
        return readers, [fd for fd, c in self.clients.items() if c.outbox]

    def serve(self, readable, writable):
        """Do what ``select`` said can be done now, then time out what waited too long."""
        if self.listener is None:
            return
        now = time.monotonic()
        if self.listener.fileno() in readable:
            self._accept(now)
        if self.reader is not None and self.reader[1] in readable:
            self._read_reader()
        for fd in list(self.clients):
            client = self.clients.get(fd)
            if client is None:
                continue
            if fd in readable and not client.outbox:
                self._read_request(fd, client, now)
            if fd in writable and client.outbox:
                self._write(fd, client)
        self._expire(now)

    def close(self, in_child=False):
        """Close every socket (in a forked child: only our copies; the parent keeps its own)."""
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        for client in self.clients.values():
            client.sock.close()
        self.clients.clear()
        if self.reader is not None:
            try:
                os.close(self.reader[1])
            except OSError:
                pass
            if not in_child:
                _reap_quietly(self.reader[0])
            self.reader = None
        _LIVE.discard(self)

    # requests

    def _accept(self, now):
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    log.warning("metrics: cannot accept a connection: %s", exc)
                return
            if len(self.clients) >= MAX_CLIENTS:
                sock.close()
                continue
            sock.setblocking(False)
            self.clients[sock.fileno()] = _Client(sock, now)

    def _read_request(self, fd, client, now):
        try:
            chunk = client.sock.recv(8192)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(fd)
            return
        client.inbox += chunk
        if b"\r\n\r\n" not in client.inbox and b"\n\n" not in client.inbox:
            if len(client.inbox) > 16384:
                self._respond(client, 431, b"request too large\n")
            return
        line = client.inbox.split(b"\n", 1)[0].decode("latin-1").split()
        method, path = (line + ["", ""])[:2]
        path = path.split("?", 1)[0]
        client.head_only = method == "HEAD"
        if method not in ("GET", "HEAD"):
            self._respond(client, 405, b"only GET\n")
        elif path == "/metrics":
            if self.metrics.age() < FRESH_SECONDS or not self.supervisor.pools:
                self._respond_metrics(client)
            else:
                client.waiting = True
                client.since = now
                self._start_reader(now)
                if self.reader is None:            # the fork failed: answer with what we have
                    self._answer_waiting()
        elif path in ("/", "/health", "/healthz"):
            self._respond(client, 200, b"ok\n")
        else:
            self._respond(client, 404, b"not found; try /metrics\n")

    def _respond_metrics(self, client):
        try:
            body = self.metrics.render()
        except Exception as exc:            # a bug here must not take the supervisor down
            log.exception("metrics: cannot render")
            self._respond(client, 500, f"{type(exc).__name__}\n".encode())
            return
        self._respond(client, 200, body, CONTENT_TYPE)

    def _respond(self, client, status, body, content_type="text/plain; charset=utf-8"):
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed",
                  408: "Request Timeout", 431: "Request Header Fields Too Large",
                  500: "Internal Server Error"}.get(status, "")
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        client.waiting = False
        client.outbox = head + (b"" if client.head_only else body)

    def _write(self, fd, client):
        try:
            sent = client.sock.send(client.outbox)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(fd)
            return
        client.outbox = client.outbox[sent:]
        if not client.outbox:
            self._drop(fd)

    def _drop(self, fd):
        client = self.clients.pop(fd, None)
        if client is not None:
            client.sock.close()

    def _expire(self, now):
        for fd, client in list(self.clients.items()):
            if client.waiting:
                continue
            if not client.outbox and now - client.since > REQUEST_TIMEOUT:
                self._drop(fd)
            elif client.outbox and now - client.since > REQUEST_TIMEOUT + READ_TIMEOUT:
                self._drop(fd)                   # it stopped reading its answer
        if self.reader is not None and now - self.reader[2] > READ_TIMEOUT:
            pid = self.reader[0]
            log.warning("metrics: reading queue numbers took over %.0fs; serving older ones",
                        READ_TIMEOUT)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.close(self.reader[1])
            self.reader = None
            self.metrics.mark_down(p.name for p in self.supervisor.pools)
            self._answer_waiting()

    def _answer_waiting(self):
        for client in self.clients.values():
            if client.waiting:
                self._respond_metrics(client)
                client.since = time.monotonic()

    # the reader process

    def _start_reader(self, now):
        if self.reader is not None:
            return
        pools = [(p.name, list(p.queues)) for p in self.supervisor.pools]
        settings = self.supervisor.settings
        read_fd, write_fd = os.pipe()
        with self.supervisor.signals.blocked():
            try:
                pid = os.fork()
            except OSError as exc:
                os.close(read_fd)
                os.close(write_fd)
                log.error("metrics: cannot fork a reader: %s", exc)
                return
            if pid == 0:                       # the reader: never returns
                os.close(read_fd)
                _run_reader(self.supervisor, settings, pools, write_fd, self._pid)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        self.reader = (pid, read_fd, now, b"")

    def _read_reader(self):
        pid, fd, started, buffer = self.reader
        try:
            chunk = os.read(fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        if chunk:
            self.reader = (pid, fd, started, buffer + chunk)
            return
        os.close(fd)                           # EOF: the reader wrote everything and exited
        self.reader = None
        try:
            result = json.loads(buffer) if buffer else {}
        except ValueError:
            result = {}
        if not result:
            self.metrics.mark_down(p.name for p in self.supervisor.pools)
        for name, numbers in result.items():
            if not numbers.get("ok"):
                log.warning("metrics: cannot read %s queue numbers: %s", name,
                            numbers.get("error"))
        self.metrics.update_queues(result)
        self._answer_waiting()


def _run_reader(supervisor, settings, pools, write_fd, parent_pid):
    """In the forked reader: read the queue numbers, write one JSON document, exit."""
    code = 1
    try:
        supervisor.signals.reset_in_child()
        for record in supervisor.all_children():
            record.channel.close()
        for sig in (signal.SIGUSR1, signal.SIGALRM, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        proc.die_with_parent(parent_pid, signal.SIGKILL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        signal.alarm(int(READ_TIMEOUT) + 1)
        proc.set_title("jobrunner metrics reader")
        data = json.dumps(read_all(settings, pools)).encode()
        while data:
            data = data[os.write(write_fd, data):]
        code = 0
    except BaseException:
        pass
    finally:
        os._exit(code)


def _reap_quietly(pid):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def from_settings(supervisor):
    """The supervisor's metrics server, or None when ``metrics_port`` is not set."""
    port = supervisor.settings.metrics_port
    if port is None:
        return None
    return MetricsServer(supervisor, port)

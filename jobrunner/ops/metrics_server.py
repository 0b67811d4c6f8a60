"""The metrics endpoint: a non-blocking HTTP socket in the supervisor's own select loop.

See ``metrics.py`` for what is counted and why the endpoint has no thread and the supervisor
no backend connection: queue numbers come from a short-lived reader process per scrape.
"""

import errno
import json
import logging
import os
import signal
import socket
import time
import weakref

from jobrunner.process import proc
from jobrunner.ops.metrics import CONTENT_TYPE, Metrics, read_all

log = logging.getLogger("jobrunner.metrics")

#: Queue numbers younger than this are served as they are; older ones are read again.
FRESH_SECONDS = 2.0
#: Longest wait for a reader process; then the scrape is answered with what is known.
READ_TIMEOUT = 4.0
#: A client that has not sent a whole request by then is dropped.
REQUEST_TIMEOUT = 5.0
#: Open client connections at most; more are refused (closed) at once.
MAX_CLIENTS = 16
_LIVE = weakref.WeakSet()       # servers whose sockets a forked process must close


def _close_in_child():
    for server in list(_LIVE):
        server.close(in_child=True)


os.register_at_fork(after_in_child=_close_in_child)


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
    ``serve(readable, writable)`` with what came back, once per pass; it feeds ``started``,
    ``finished`` and ``child_exited`` from what its children report. See the module docstring for the design.
    """

    def __init__(self, supervisor, port, host="127.0.0.1"):
        self.supervisor = supervisor
        self.metrics = Metrics(pools=lambda: supervisor.pools)
        self.listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                      socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind((host, port))
        except OSError as exc:
            self.listener.close()
            from jobrunner.errors import ConfigError
            raise ConfigError(f"cannot serve metrics on port {port} of {host}: "
                              f"{exc.strerror}") from None
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.clients = {}          # fd -> _Client
        self.reader = None         # (pid, read fd, started monotonic, buffer)
        self._pid = os.getpid()
        _LIVE.add(self)
        log.info("metrics: serving http://%s/metrics", _address(host, self.port))

    # the supervisor's hooks

    def started(self, record, job):
        """Count a job (a ``JobEntry``) of ``record``'s batch that its slot shows started."""
        self.metrics.started(record.pool.backend_name, job.queue, job.worker)

    def finished(self, record, done):
        """Count the outcome a ``Done`` of ``record``'s child reports; an entry that names no
        worker is the job the child was running."""
        job = done if done.worker else (record.running or done)
        self.metrics.finished(record.pool.backend_name, job.queue, job.worker, done.outcome,
                              done.duration)

    def child_exited(self, record, code):
        self.metrics.child_exited(record.pool.backend_name, record.kind, record.running,
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
            self.metrics.mark_down(p.backend_name for p in self.supervisor.pools)
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
        pools = [(p.backend_name, list(p.queues)) for p in self.supervisor.pools]
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
            self.metrics.mark_down(p.backend_name for p in self.supervisor.pools)
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


def _address(host, port):
    """``host:port`` as a URL writes it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def from_settings(supervisor):
    """The supervisor's metrics server, or None when ``metrics_port`` is not set."""
    port = supervisor.settings.metrics_port
    if port is None:
        return None
    return MetricsServer(supervisor, port, supervisor.settings.metrics_host)

"""A TCP proxy for fault tests: forwards to a server, and can hang (stop forwarding, keep every
socket open) and later release what it held, as a network that stalls without a reset does.

It runs in one thread with non-blocking sockets and a wake-up socket, so ``hang()`` and
``release()`` take effect before they return: no byte crosses after ``hang()`` returns.
"""

import select
import socket
import threading

#: Bytes read from one side per pass.
CHUNK = 65536


class _Pair:
    """A client connection and its connection to the server, with what each side still owes."""

    def __init__(self, client):
        self.client = client
        self.server = None
        self.to_server = b""
        self.to_client = b""

    def sockets(self):
        return [s for s in (self.client, self.server) if s is not None]


class TcpProxy:
    """Listens on ``127.0.0.1:<port>`` and forwards every connection to ``target``: a
    ``(host, port)`` pair, or the path of a Unix socket.

    ``receive_buffer``: SO_RCVBUF of the proxy's client-side sockets. A small one makes a hang
    close the TCP window after a few KB, so a client's bigger writes stay unsent, as they do
    when a network stops acknowledging them.
    """

    def __init__(self, target, receive_buffer=None):
        self.target = target
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if receive_buffer is not None:
            # Set before listen(): accepted sockets inherit it, and the window is announced
            # from the handshake on.
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.pairs = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._lock = threading.Lock()
        self._hung = False
        self._stopping = False
        self._applied = threading.Condition(self._lock)
        self._generation = 0          # bumped by every request; the loop echoes it when applied
        self._seen = 0
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)

    def start(self):
        self._thread.start()
        return self

    @property
    def connections(self):
        """Client connections open now."""
        with self._lock:
            return len(self.pairs)

    # -- control ------------------------------------------------------------------------

    def hang(self):
        """Stop forwarding in both directions, leaving every socket open and unread."""
        self._request(hung=True)

    def release(self):
        """Forward again, starting with whatever was held during the hang."""
        self._request(hung=False)

    def close(self):
        """Stop the thread and close every socket (clients then see the connection close).
        Closing again does nothing."""
        if self.listener.fileno() < 0:
            return
        self._request(stopping=True)
        if self._thread.is_alive():
            self._thread.join(10)
        for pair in self.pairs:
            for sock in pair.sockets():
                sock.close()
        self.listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def _request(self, hung=None, stopping=None):
        with self._lock:
            if hung is not None:
                self._hung = hung
            if stopping is not None:
                self._stopping = stopping
            self._generation += 1
            wanted = self._generation
            self._wake_w.send(b"x")
            if not self._thread.is_alive():
                return
            # The loop acknowledges once it has taken the new state into account.
            if not self._applied.wait_for(lambda: self._seen >= wanted, timeout=10):
                raise AssertionError("the proxy thread did not answer")

    # -- the loop -----------------------------------------------------------------------

    def _run(self):
        while True:
            with self._lock:
                hung, stopping = self._hung, self._stopping
                self._seen = self._generation
                self._applied.notify_all()
            if stopping:
                return
            readers, writers = [self._wake_r, self.listener], []
            if not hung:
                for pair in self.pairs:
                    self._watch(pair, readers, writers)
            readable, writable, _ = select.select(readers, writers, [])
            if self._wake_r in readable:
                self._wake_r.recv(4096)
                continue                      # take the new state before moving any byte
            if self.listener in readable:
                self._accept(hung)
            for pair in list(self.pairs):
                self._pump(pair, readable, writable)

    def _watch(self, pair, readers, writers):
        if pair.server is None:
            self._connect(pair)
            if pair.server is None:
                return
        # Read a side only when the other side has taken everything it was sent before.
        if not pair.to_server:
            readers.append(pair.client)
        else:
            writers.append(pair.server)
        if not pair.to_client:
            readers.append(pair.server)
        else:
            writers.append(pair.client)

    def _accept(self, hung):
        try:
            client, _ = self.listener.accept()
        except BlockingIOError:
            return
        client.setblocking(False)
        pair = _Pair(client)
        with self._lock:
            self.pairs.append(pair)
        if not hung:
            self._connect(pair)

    def _connect(self, pair):
        server = None
        try:
            if isinstance(self.target, str):
                server = socket.socket(socket.AF_UNIX)
                server.settimeout(5)
                server.connect(self.target)
            else:
                server = socket.create_connection(self.target, timeout=5)
        except OSError:
            if server is not None:
                server.close()
            self._drop(pair)
            return
        server.setblocking(False)
        pair.server = server

    def _pump(self, pair, readable, writable):
        if pair.server is None:
            return
        for source, direction in ((pair.client, "to_server"), (pair.server, "to_client")):
            if source in readable:
                try:
                    chunk = source.recv(CHUNK)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    self._drop(pair)
                    return
                setattr(pair, direction, getattr(pair, direction) + chunk)
        for target, direction in ((pair.server, "to_server"), (pair.client, "to_client")):
            pending = getattr(pair, direction)
            if pending and target in writable:
                try:
                    sent = target.send(pending)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    self._drop(pair)
                    return
                setattr(pair, direction, pending[sent:])

    def _drop(self, pair):
        for sock in pair.sockets():
            sock.close()
        pair.client = pair.server = None
        pair.to_server = pair.to_client = b""
        with self._lock:
            if pair in self.pairs:
                self.pairs.remove(pair)

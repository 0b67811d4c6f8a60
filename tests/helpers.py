"""Helpers shared by tests: waiting on a condition with a deadline, running the real CLI."""

import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def wait_for(condition, timeout=15.0, interval=0.02, message="condition"):
    """Poll ``condition`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def read_lines(path):
    try:
        with open(path) as handle:
            return [line.rstrip("\n") for line in handle if line.strip()]
    except FileNotFoundError:
        return []


class CliProcess:
    """`python -m jobrunner ...` in a subprocess with its output captured to a file."""

    def __init__(self, args, env, log_path, app_dir=HERE, wrapper=()):
        """``app_dir``: where the app modules named in ``args`` live (this folder's ``apps``
        by default; the benchmarks pass theirs). ``wrapper``: a command that execs the rest
        (``ip netns exec <name>``), so the pid is still jobrunner's."""
        self.log_path = log_path
        self.log_file = open(log_path, "w")
        full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([app_dir, os.path.dirname(HERE)]),
                        **env)
        self.proc = subprocess.Popen([*wrapper, sys.executable, "-m", "jobrunner", *args],
                                     stdout=self.log_file, stderr=subprocess.STDOUT,
                                     env=full_env, cwd=app_dir, start_new_session=True)

    @property
    def pid(self):
        return self.proc.pid

    def output(self):
        with open(self.log_path) as handle:
            return handle.read()

    def wait_for_log(self, text, timeout=15.0):
        wait_for(lambda: text in self.output(), timeout, message=f"{text!r} in the log:\n"
                 + self.output()[-3000:])

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout=30.0):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("the supervisor did not exit; log:\n" + self.output()[-3000:])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log_file.close()


def tcp_sockets(pid):
    """``(state, local address, local port, remote port)`` of each TCP socket that process
    ``pid`` holds, read from /proc (state ``"0A"``: listening, ``"01"``: established)."""
    import socket
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            with open(f"/proc/net/{table}") as handle:
                rows = handle.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[9] not in inodes:
                continue
            local, _, local_port = fields[1].partition(":")
            raw = bytes.fromhex(local)
            if sys.byteorder == "little":        # printed as 32-bit words in host order
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.append((fields[3], socket.inet_ntop(family, raw), int(local_port, 16),
                          int(fields[2].rsplit(":", 1)[1], 16)))
    return found


def child_pids(parent_pid):
    """PIDs of the direct children of ``parent_pid``."""
    try:
        with open(f"/proc/{parent_pid}/task/{parent_pid}/children") as handle:
            return [int(pid) for pid in handle.read().split()]
    except FileNotFoundError:
        return []


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:        # gone between the checks: reaped while /proc was read
        return False


# -- private servers for fault tests (never the shared ones: those are restarted here) ------

def free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A redis-server of our own on a free port, with AOF on, that tests may stop and restart."""

    def __init__(self, directory, port=None):
        self.dir = str(directory)
        self.port = port or free_port()
        self.proc = None
        os.makedirs(self.dir, exist_ok=True)

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", self.dir,
             "--save", "", "--maxmemory-policy", "noeviction"],
            stdout=open(os.path.join(self.dir, "redis.log"), "a"), stderr=subprocess.STDOUT,
            start_new_session=True)
        import redis
        client = redis.Redis(port=self.port)

        def up():
            try:
                return client.ping()
            except redis.RedisError:
                return False
        wait_for(up, 15, 0.05, message=f"redis on port {self.port}")
        client.close()
        return self

    def stop(self):
        """SHUTDOWN (the AOF is flushed, as on a clean restart), then wait for the exit."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(15)
        self.proc = None

    def restart(self, down_for=0.0):
        self.stop()
        time.sleep(down_for)
        self.start()


class PrivatePostgres:
    """A Postgres 15 cluster of our own (run as the ``postgres`` user) on a free port, with pgmq.

    Needs root (for ``su``) or to run as ``postgres`` already; ``available()`` says whether
    this machine can.
    """

    BIN = "/usr/lib/postgresql/15/bin"

    def __init__(self, directory, port=None):
        self.dir = str(directory)
        self.port = port or free_port()
        self._folder = None         # a folder of its own, removed with it (``in_new_folder``)
        #: Addresses the server listens on (comma-separated, as ``listen_addresses`` takes).
        self.listen = "127.0.0.1"

    @classmethod
    def in_new_folder(cls, prefix):
        """A cluster in a new temporary folder (not under pytest's tmp: that is closed to the
        postgres user), which ``destroy`` removes with it."""
        import tempfile
        folder = tempfile.mkdtemp(prefix=prefix)
        server = cls(folder + "/pg")
        server._folder = folder
        return server

    @classmethod
    def available(cls):
        import pwd
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return False
        return os.path.exists(os.path.join(cls.BIN, "initdb")) and os.geteuid() == 0

    @property
    def dsn(self):
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @staticmethod
    def _as_postgres(*argv):
        import shlex
        command = " ".join(shlex.quote(a) for a in argv)
        subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", command], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)

    #: A data directory initdb made once for this process, that every cluster starts as a copy
    #: of (initdb takes a second or two, a copy a tenth of that); made on first use.
    _template = None

    @classmethod
    def _template_data(cls):
        if cls._template is None:
            import atexit
            import shutil
            import tempfile
            folder = tempfile.mkdtemp(prefix="jr-pg-template-")
            os.chmod(folder, 0o755)
            _give_to_postgres(folder)
            cls._as_postgres(os.path.join(cls.BIN, "initdb"), "-D", folder + "/data", "-A",
                             "trust", "-U", "postgres")
            owner = os.getpid()
            # Only the process that made it removes it (not a forked child on its way out).
            atexit.register(lambda: os.getpid() == owner and shutil.rmtree(folder, True))
            cls._template = folder + "/data"
        return cls._template

    def init(self):
        os.makedirs(self.dir, exist_ok=True)
        _give_to_postgres(self.dir)
        os.chmod(os.path.dirname(self.dir), 0o755)
        # -a: the copy keeps the postgres user's ownership and the 0700 initdb gave it
        self._as_postgres("cp", "-a", self._template_data(), self.dir + "/data")
        self.start()
        import psycopg2
        from jobrunner.backends.pgmq.install import install
        conn = psycopg2.connect(self.dsn)
        install(conn)
        conn.close()
        return self

    def start(self):
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses={self.listen} "
                   "-c fsync=off "
                   "-c max_connections=200")
        self._as_postgres(os.path.join(self.BIN, "pg_ctl"), "-D", self.dir + "/data", "-o",
                          options, "-l", self.dir + "/pg.log", "-w", "start")

    def stop(self, mode="fast"):
        self._as_postgres(os.path.join(self.BIN, "pg_ctl"), "-D", self.dir + "/data", "-m",
                          mode, "-w", "stop")

    def restart(self, down_for=0.0, mode="fast"):
        self.stop(mode)
        time.sleep(down_for)
        self.start()

    def destroy(self):
        try:
            self.stop("immediate")
        except Exception:
            pass
        import shutil
        shutil.rmtree(self._folder or self.dir, ignore_errors=True)


def _give_to_postgres(path):
    import pwd
    entry = pwd.getpwnam("postgres")
    os.chown(path, entry.pw_uid, entry.pw_gid)


def kill_at_markers(out, stages, timeout=15.0):
    """SIGKILL each child as soon as it leaves the marker ``<out>.<n>.<stage>`` with its pid.

    All markers are watched at once: a child paused at one stage must not wait for the kill of
    another, or its pause could end before the kill lands.
    """
    pending = {f"{out}.{n}.{stage}" for n, stage in stages.items()}
    killed = []

    def kill_ready():
        for path in sorted(pending):
            if os.path.exists(path):
                with open(path) as handle:
                    pid = int(handle.read())
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                pending.discard(path)
        return not pending

    wait_for(kill_ready, timeout, 0.005, message=f"children at {sorted(pending)}")
    return killed

"""A PgBouncer of the test's own, in transaction pooling, in front of the run's Postgres database.

Debian's pgbouncer refuses to run as root, so it runs as ``nobody`` from a folder of its own;
its log stays there for a failing test to read. ``pool_size`` server connections are shared by
every client, so a small pool puts the transactions of different clients on the same server
connection, as a busy production pooler does.
"""

import os
import shutil
import subprocess
import tempfile

import psycopg2
import psycopg2.extensions

from helpers import free_port, wait_for


def unavailable_reason():
    """Why this machine cannot run a PgBouncer for a test, or None when it can."""
    if not shutil.which("pgbouncer"):
        return "pgbouncer is not installed (Debian package pgbouncer)"
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return "pgbouncer refuses root, and runuser is missing"
    return None


class PgBouncer:
    """``pgbouncer`` on a free loopback port, pooling one database of ``server_dsn``."""

    def __init__(self, server_dsn, pool_size=2, pool_mode="transaction"):
        self.target = psycopg2.extensions.parse_dsn(server_dsn)
        self.pool_size = pool_size
        self.pool_mode = pool_mode
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="jr-bouncer-")
        self.proc = None

    @property
    def dsn(self):
        """Where clients connect: the pooler, with the database's own name and user."""
        return (f"postgresql://{self.target.get('user') or _os_user()}@127.0.0.1:{self.port}/"
                f"{self.target['dbname']}")

    def _config(self):
        user = self.target.get("user") or _os_user()
        server = " ".join(f"{key}={self.target[key]}" for key in ("host", "port", "dbname")
                          if self.target.get(key))
        with open(os.path.join(self.dir, "users.txt"), "w") as users:
            users.write(f'"{user}" ""\n')
        return "\n".join([
            "[databases]",
            f"{self.target['dbname']} = {server} user={user}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {self.dir}/users.txt",
            f"pool_mode = {self.pool_mode}",
            f"default_pool_size = {self.pool_size}",
            "max_client_conn = 200",
            f"logfile = {self.dir}/pgbouncer.log",
            f"pidfile = {self.dir}/pgbouncer.pid",
            "",
        ])

    def start(self):
        ini = os.path.join(self.dir, "pgbouncer.ini")
        with open(ini, "w") as handle:
            handle.write(self._config())
        os.chmod(self.dir, 0o777)
        command = ["pgbouncer", ini]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "nobody", "--", *command]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.dir, "stderr.txt"), "w"),
                                     start_new_session=True)
        wait_for(self._answers, 15, 0.05, message=f"pgbouncer on port {self.port}: "
                 f"{self.log()[-2000:]}")
        return self

    def _answers(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"pgbouncer exited {self.proc.returncode}: {self.log()}")
        try:
            psycopg2.connect(self.dsn, connect_timeout=2).close()
            return True
        except psycopg2.OperationalError:
            return False

    def log(self):
        text = ""
        for name in ("stderr.txt", "pgbouncer.log"):
            try:
                with open(os.path.join(self.dir, name)) as handle:
                    text += handle.read()
            except OSError:
                pass
        return text

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _os_user():
    import pwd
    return pwd.getpwuid(os.geteuid()).pw_name

"""A Postgres primary with a streaming standby, private to one test, that it can fail over.

Both are ``PrivatePostgres`` clusters (run as the ``postgres`` user, on free ports): the primary
is made by ``initdb`` with pgmq installed, the standby is a ``pg_basebackup -R`` of it that
streams its WAL. ``synchronous=True`` makes every commit on the primary wait until the standby
has flushed it (``synchronous_standby_names='*'``, ``synchronous_commit=on``), so a commit the
client saw acknowledged survives the primary's loss; asynchronous replication may lose the
last ones. The standby streams through a ``TcpProxy`` of the test process, so that a test can
stall the replication link (``stall_replication``: nothing more reaches the standby, nothing is
closed) and show what each mode does with the commits made meanwhile. ``stop_primary`` and
``promote`` are what a failover tool does: the primary goes away at once (``pg_ctl stop -m
immediate``: a crash, no shutdown checkpoint), then the standby takes over.
"""

import os
import shutil
import time

import psycopg2

from helpers import PrivatePostgres, wait_for
from proxy import TcpProxy

#: What the primary's pg_hba.conf gets so that the standby may stream from it.
REPLICATION_HBA = "host replication postgres 127.0.0.1/32 trust\n"


class ReplicatedPostgres:
    """Two clusters under ``directory``: ``primary`` and ``standby``, the latter following."""

    def __init__(self, directory, synchronous: bool):
        self.dir = str(directory)
        self.synchronous = synchronous
        self.primary = PrivatePostgres(os.path.join(self.dir, "primary"))
        self.standby = PrivatePostgres(os.path.join(self.dir, "standby"))
        self.link = None                # the proxy the standby streams through
        self.failed_over_at = None      # time.time() of the primary's stop
        self.promoted_at = None         # time.time() the standby took writes

    @staticmethod
    def available() -> bool:
        return PrivatePostgres.available() and os.path.exists(
            os.path.join(PrivatePostgres.BIN, "pg_basebackup"))

    def dsn(self, uri=True, **extra) -> str:
        """The multi-host DSN naming both servers (standby first when ``standby_first``, to
        show that a read-only server is passed over), writable server wanted."""
        hosts = [self.primary, self.standby]
        if extra.pop("standby_first", False):
            hosts.reverse()
        options = {"target_session_attrs": "read-write", **extra}
        if uri:
            query = "&".join(f"{key}={value}" for key, value in options.items() if value)
            netloc = ",".join(f"127.0.0.1:{server.port}" for server in hosts)
            return f"postgresql://postgres@{netloc}/postgres" + (f"?{query}" if query else "")
        words = [f"host={','.join('127.0.0.1' for _ in hosts)}",
                 f"port={','.join(str(server.port) for server in hosts)}",
                 "user=postgres", "dbname=postgres"]
        return " ".join(words + [f"{key}={value}" for key, value in options.items() if value])

    def start(self) -> "ReplicatedPostgres":
        self.primary.init()                      # initdb, start, pgmq installed
        with open(os.path.join(self.primary.dir, "data", "pg_hba.conf"), "a") as hba:
            hba.write(REPLICATION_HBA)
        self.sql(self.primary, "SELECT pg_reload_conf()")
        self.link = TcpProxy(("127.0.0.1", self.primary.port)).start()
        self._base_backup()
        self.standby.start()
        if self.synchronous:
            # Set after the base backup, so the standby (a future primary with no standby of
            # its own) does not wait for one; the test's failover leaves it alone.
            self.sql(self.primary, "ALTER SYSTEM SET synchronous_standby_names = '*'",
                      "ALTER SYSTEM SET synchronous_commit = 'on'", "SELECT pg_reload_conf()")
        wait_for(self._streaming, 30, 0.05, message="the standby streaming"
                 + (" synchronously" if self.synchronous else ""))
        return self

    def _base_backup(self):
        os.makedirs(self.standby.dir, exist_ok=True)
        import pwd
        entry = pwd.getpwnam("postgres")
        os.chown(self.standby.dir, entry.pw_uid, entry.pw_gid)
        self.standby._as_postgres(
            os.path.join(PrivatePostgres.BIN, "pg_basebackup"), "-D",
            self.standby.dir + "/data", "-h", "127.0.0.1", "-p", str(self.link.port),
            "-U", "postgres", "-X", "stream", "-R", "-c", "fast")

    def _streaming(self):
        wanted = "sync" if self.synchronous else "async"
        rows = self.sql(self.primary, "SELECT state, sync_state FROM pg_stat_replication")
        return rows == [("streaming", wanted)]

    @staticmethod
    def sql(server, *statements):
        """Run ``statements`` on ``server`` (autocommit); the last one's rows, if any."""
        conn = psycopg2.connect(server.dsn, connect_timeout=5)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement)
                return cur.fetchall() if cur.description else None
        finally:
            conn.close()

    def stall_replication(self):
        """From now on nothing the primary sends reaches the standby (the link hangs open)."""
        self.link.hang()

    def stop_primary(self):
        """The primary gone at once, as a crash would take it (its clients see their
        connections close)."""
        self.failed_over_at = time.time()
        self.primary.stop("immediate")

    def promote(self):
        """The standby takes writes (``pg_ctl promote -w`` returns once it does)."""
        self.standby._as_postgres(os.path.join(PrivatePostgres.BIN, "pg_ctl"), "-D",
                                  self.standby.dir + "/data", "-w", "promote")
        self.promoted_at = time.time()

    def bring_back_old_primary_read_only(self):
        """The old primary up again as a standby of nothing (``standby.signal``, no
        ``primary_conninfo``): what a failover tool's demotion leaves, a server that answers
        but takes no writes."""
        data = self.primary.dir + "/data"
        self.primary._as_postgres("touch", data + "/standby.signal")
        self.primary.start()

    def destroy(self):
        self.standby.destroy()
        self.primary.destroy()
        if self.link is not None:
            self.link.close()
        shutil.rmtree(self.dir, ignore_errors=True)

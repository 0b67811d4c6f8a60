"""One backend's pool: how many children it wants, the live ones, and boot-failure tracking."""

import time

import attr

#: Consecutive children that die before reporting ready, after which the pool gives up.
MAX_BOOT_FAILURES = 5


@attr.s(kw_only=True, eq=False)
class ChildRecord:
    """What the supervisor knows about one live child."""

    pid = attr.ib()
    child_id = attr.ib()
    pool = attr.ib()
    channel = attr.ib()
    kind = attr.ib(default="worker")          # "worker" or "housekeeper"
    spawned_at = attr.ib(factory=time.monotonic)
    last_beat = attr.ib(factory=time.monotonic)
    ready = attr.ib(default=False)
    running = attr.ib(default=None)           # the "start" message of the job it runs
    running_since = attr.ib(default=None)     # monotonic
    running_epoch = attr.ib(default=None)
    stop_sent = attr.ib(default=False)
    abort_sent_at = attr.ib(default=None)
    kill_reason = attr.ib(default=None)       # why the supervisor killed it, if it did


@attr.s(kw_only=True, eq=False)
class Pool:
    """The children serving one backend's queues."""

    name = attr.ib()                 # the backend name, "pgmq" or "sidekiq"
    backend = attr.ib()
    queues = attr.ib()
    size = attr.ib()
    children = attr.ib(factory=dict)          # pid -> ChildRecord
    housekeeper = attr.ib(default=None)       # ChildRecord of its housekeeper
    boot_failures = attr.ib(default=0)
    next_spawn_at = attr.ib(default=0.0)      # monotonic; respawn backoff after crashes
    pending_recovery = attr.ib(factory=list)  # recover messages waiting for a housekeeper
    recycling = attr.ib(default=None)         # pid of the child being recycled
    serial = attr.ib(default=0)

    def note_exit(self, record, now):
        """Update crash backoff after ``record`` exited; True if the pool must give up."""
        if record.ready and now - record.spawned_at > 1.0:
            self.boot_failures = 0
            self.next_spawn_at = now
            return False
        self.boot_failures += 1
        self.next_spawn_at = now + min(0.1 * 2 ** self.boot_failures, 10.0)
        return self.boot_failures >= MAX_BOOT_FAILURES

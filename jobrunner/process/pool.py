"""A pool of children: how many it wants, the live ones, crash-loop tracking; and building the
pools of a supervisor from its settings (``build_pools``).

Every backend with queues to serve gets a shared pool of ``processes`` children. Dedicated
pools (``Settings.pools``, ``--pool critical=2``; like Roadster's per-queue worker counts) take
their queues out of the shared pool, so a flood on one queue cannot starve another. All pools
of a backend share one housekeeper (one heartbeat per supervisor and backend), owned by the
first of them.
"""

import logging
import os
import signal
import time

import attr

from jobrunner.process.messages import Stop

log = logging.getLogger("jobrunner.supervisor")

#: Consecutive children that die at start, after which the pool gives up.
MAX_BOOT_FAILURES = 5
#: A child ready for this long has booted fine: the pool's count of boot failures starts over.
HEALTHY_AFTER = 1.0
#: Longest wait before respawning after crashes at start.
MAX_RESPAWN_DELAY = 10.0


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
    ready_at = attr.ib(default=None)          # monotonic
    healthy = attr.ib(default=False)          # ready for HEALTHY_AFTER seconds
    jobs = attr.ib(default=None)              # a worker's slot.JobTracker
    running = attr.ib(default=None)           # the JobEntry of the job it runs, from its batch
    running_since = attr.ib(default=None)     # monotonic, when the supervisor first saw it
    running_epoch = attr.ib(default=None)
    jobs_done = attr.ib(default=0)
    wants_recycle = attr.ib(default=False)    # asked to be replaced (max_jobs / max_rss)
    recycle_reason = attr.ib(default=None)    # and why, in the child's words
    stop_sent = attr.ib(default=False)
    abort_sent_at = attr.ib(default=None)
    kill_reason = attr.ib(default=None)       # why the supervisor killed it, if it did
    boot_error = attr.ib(default=None)        # (error line, traceback) from a "fatal" message

    def send_stop(self):
        """Ask the child to finish its job and exit."""
        self.stop_sent = True
        self.channel.send(Stop())

    def signal(self, sig):
        """Send ``sig`` to the child; one that has already exited is left alone."""
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self, reason):
        """SIGKILL the child, remembering why (a "timeout" or "heartbeat" kill is logged)."""
        self.kill_reason = reason
        if reason != "shutdown":
            job = self.running
            log.error("killing %s %s %s: %s%s", self.pool.name,
                      "housekeeper" if self.kind == "housekeeper" else "child", self.pid, reason,
                      f" (job {job.id} of {job.worker})" if job else "")
        self.signal(signal.SIGKILL)

    def rebase(self, shift):
        """Move its clocks ``shift`` seconds on: the supervisor was not there to watch."""
        self.last_beat += shift
        if self.running_since is not None:
            self.running_since += shift

    def overdue(self, now, timeout_grace, heartbeat_timeout):
        """Why the supervisor must kill this child now ("timeout": its job ran past the job's
        timeout and the grace; "heartbeat": silent too long while idle), or None."""
        if self.running is not None:
            timeout = self.running.timeout
            if timeout and now - self.running_since > timeout + timeout_grace:
                return "timeout"
            return None
        if now - self.last_beat > heartbeat_timeout:
            return "heartbeat"
        return None


@attr.s(kw_only=True, eq=False)
class CrashLoop:
    """Counts consecutive failures at start of one kind of child, with respawn backoff."""

    failures = attr.ib(default=0)
    next_spawn_at = attr.ib(default=0.0)      # monotonic
    last_error = attr.ib(default=None)

    def failed(self, now):
        """Note one failure at start; returns True when it is time to give up."""
        self.failures += 1
        self.next_spawn_at = now + min(0.1 * 2 ** self.failures, MAX_RESPAWN_DELAY)
        return self.failures >= MAX_BOOT_FAILURES

    def reset(self):
        self.failures = 0
        self.next_spawn_at = 0.0
        self.last_error = None

    def may_spawn(self, now):
        return now >= self.next_spawn_at


@attr.s(kw_only=True, eq=False)
class Pool:
    """The children serving one backend's queues, and that backend's housekeeper."""

    name = attr.ib()                 # the backend's name, with the queues of a dedicated pool
    backend = attr.ib()
    queues = attr.ib()
    size = attr.ib()
    children = attr.ib(factory=dict)          # pid -> ChildRecord of its workers
    housekeeper = attr.ib(default=None)       # ChildRecord of its housekeeper
    boot = attr.ib(factory=CrashLoop)         # workers failing at start
    keeper_boot = attr.ib(factory=CrashLoop)  # housekeepers dying young
    pending_recovery = attr.ib(factory=list)  # recover messages waiting for a housekeeper
    sent_recovery = attr.ib(factory=dict)     # serial -> recover message not yet confirmed
    recovery_serial = attr.ib(default=0)
    recycling = attr.ib(default=None)         # pid of the child being recycled
    serial = attr.ib(default=0)
    primary = attr.ib(default=None)           # the pool of the same backend that owns the
                                              # housekeeper, when it is not this one

    @property
    def backend_name(self):
        """The name of the backend this pool serves (metrics are kept per backend)."""
        return self.backend.name

    def owner(self):
        """The pool whose housekeeper serves this one (recovery, heartbeat)."""
        return self.primary or self

    def active(self):
        """Workers not yet told to stop: the ones that count towards ``size``."""
        return [r for r in self.children.values() if not r.stop_sent]

    def note_healthy(self, record, now):
        """Mark ``record`` healthy once it has been ready a while; that ends a crash loop."""
        if record.ready and not record.healthy and now - record.ready_at >= HEALTHY_AFTER:
            record.healthy = True
            crash_loop = self.keeper_boot if record.kind == "housekeeper" else self.boot
            crash_loop.reset()

    def flush_recovery(self):
        """Hand the waiting recovery requests to the housekeeper once it is ready for them.

        A request is kept until the housekeeper confirms it (``Recovered``): one that dies
        with requests in hand, or before it read them, leaves them to the next housekeeper.
        Recovery is guarded, so a request applied twice settles nothing twice.
        """
        keeper = self.housekeeper
        while self.pending_recovery and keeper is not None and keeper.ready \
                and not keeper.channel.closed:
            request = self.pending_recovery.pop(0)
            self.recovery_serial += 1
            request.serial = self.recovery_serial
            self.sent_recovery[request.serial] = request
            keeper.channel.send(request)

    def recovery_done(self, serial):
        self.sent_recovery.pop(serial, None)

    def housekeeper_gone(self, keep_requests=True):
        """Its housekeeper exited: what it had not confirmed waits for the next one, first.

        At shutdown (``keep_requests`` False) the housekeeper had its grace period; its jobs
        stay in their leases and in-flight lists, which outlive this supervisor.
        """
        self.housekeeper = None
        unconfirmed = [self.sent_recovery[serial] for serial in sorted(self.sent_recovery)]
        self.sent_recovery.clear()
        if keep_requests:
            self.pending_recovery[:0] = unconfirmed
        elif unconfirmed:
            log.warning("%s housekeeper stopped before it confirmed the recovery of %d "
                        "child(ren); their jobs come back at lease end or by the next sweep",
                        self.name, len(unconfirmed))

    def grant_recycle(self):
        """Stop one child that asked to be recycled, once the last one has been replaced."""
        if self.recycling in self.children:
            return
        active = self.active()
        if len(active) < self.size or not all(r.ready for r in active):
            return                      # the previous replacement is not up yet
        for record in active:
            if record.wants_recycle:
                self.recycling = record.pid
                log.info("recycling %s child %s (%s)", self.name, record.pid,
                         record.recycle_reason or f"asked to after {record.jobs_done} jobs")
                record.send_stop()
                return

    def resize(self, step):
        """Grow or shrink by ``step`` children, never below one; the extra ones are stopped."""
        self.size = max(1, self.size + step)
        while len(self.active()) > self.size:
            self.pick_to_stop().send_stop()

    def pick_to_stop(self):
        """The active worker to stop when the pool shrinks: idle first, then the youngest."""
        active = self.active()
        if not active:
            return None
        return min(active, key=lambda r: (r.running is not None, -r.spawned_at))


def find_child(pools, pid):
    """(the record of child ``pid``, its pool), or (None, None) when it is none of ours."""
    for pool in pools:
        if pid in pool.children:
            return pool.children[pid], pool
        if pool.housekeeper is not None and pool.housekeeper.pid == pid:
            return pool.housekeeper, pool
    return None, None


def build_pools(settings, registry, make_backend):
    """The pools for ``settings`` (see the module docstring), owners first per backend."""
    pools = []
    for name in registry.backends():
        served = registry.queues(name)
        dedicated = [q for spec in settings.pools for q in spec.queues]
        shared = [q for q in (settings.queues or served) if q in served and q not in dedicated]
        wanted = [(shared, settings.processes, settings.queue_order, name)] if shared else []
        for spec in settings.pools:
            queues = [q for q in spec.queues if q in served]
            if queues:
                wanted.append((queues, spec.size, spec.order, f"{name}[{','.join(queues)}]"))
        owner = None
        for queues, size, order, label in wanted:
            backend = make_backend(name, attr.evolve(settings, queue_order=order), registry)
            pool = Pool(name=label, backend=backend, queues=queues, size=size, primary=owner)
            owner = owner or pool
            pools.append(pool)
    return pools     # every queue named in the settings is served: config.check_served

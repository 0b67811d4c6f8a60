"""The supervisor: forks a pool of children per backend, watches them, and answers signals.

Signals (``signals.py``; handlers only record them, the main loop acts):
    TERM, INT   graceful stop: children finish their job; at the shutdown timeout the jobs
                still running are requeued and their children stopped. A second one stops now.
    TSTP        quiet: no new jobs; children stay up.
    TTIN, TTOU  one child more / fewer in every pool.
    USR2        every worker child writes the stack of its running job (Sidekiq's remote TTIN).
What each does is in ``commands.py``.
The supervisor holds no backend connection: each child opens its own after the fork
(``spawn.py``), and a housekeeper child per backend does the shared upkeep. Each pass of the
main loop acts on signals, keeps the pools at size, kills overdue children, hands exited
children's jobs to the housekeeper, grants recycling and drives a stop in progress; each
message from a child goes to ``handle_<kind>``. ``docs/design.md`` ("Process model") has the
whole picture.
"""

import logging
import os
import select
import signal
import socket
import time
import uuid

from jobrunner import config
from jobrunner.backends import make_backend
from jobrunner.process import exits, messages, preflight, proc
from jobrunner.errors import JobrunnerError
from jobrunner.process.exits import PoolBootError
from jobrunner.process.history import ClassCounts
from jobrunner.process.pool import MAX_BOOT_FAILURES, build_pools, find_child
from jobrunner.process.messages import State
from jobrunner.process.commands import SignalActions
from jobrunner.process.signals import SignalQueue
from jobrunner.process.spawn import spawn
from jobrunner.process.state import SupervisorState

__all__ = ["PoolBootError", "Supervisor"]

log = logging.getLogger("jobrunner.supervisor")

#: Seconds a child gets to requeue its job after the abort signal, before SIGKILL.
ABORT_GRACE = 3.0
#: Seconds housekeepers get to finish recovery work at shutdown.
HOUSEKEEPER_GRACE = 10.0
#: Longest sleep of the main loop when nothing happens.
TICK = 0.25
#: Seconds between two passes of the main loop after which the supervisor takes itself to
#: have been stopped or frozen (a pass sleeps at most TICK).
FROZEN_AFTER = 5.0


class Supervisor(SignalActions):
    """Runs pools of children for a registry until stopped; see the module docstring."""

    def __init__(self, registry, settings=None, metrics_server=None, **kwargs):
        """``metrics_server``: ``factory(supervisor) -> endpoint or None``, the metrics
        endpoint served from this loop (``jobrunner.Supervisor`` passes the Prometheus one);
        the endpoint has ``watch``, ``serve``, ``started``, ``finished``, ``child_exited`` and
        ``close``."""
        self.registry = registry
        self._metrics_server = metrics_server
        self.settings = settings or config.resolve(kwargs)
        config.check_served(self.settings, registry.queues(None))
        self.pools = []
        self.signals = SignalQueue()
        self.stopping_since = None
        self.deadline = None
        self.quiet = False
        self.halt_error = None
        self.hostname = socket.gethostname()
        self.identity = f"{self.hostname}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.started_at = time.time()
        self._last_state = 0.0
        self._last_pass = time.monotonic()
        self.metrics = None             # the metrics endpoint, when one is served
        self.settled = ClassCounts()    # runs per backend, minute and class, for housekeepers

    # -- public ----------------------------------------------------------------------------

    def run(self):
        """Run until stopped; returns the exit code (0 after a clean stop).

        Raises ``PoolBootError`` after stopping everything when a pool's children keep dying
        at start.
        """
        self.pools = build_pools(self.settings, self.registry, make_backend)
        if not self.pools:
            raise JobrunnerError("nothing to run: no registered worker serves the chosen queues")
        if self._metrics_server is not None:                   # metrics: a socket, no thread
            self.metrics = self._metrics_server(self)
        self.signals.install()
        log.info("supervisor %s starting: %s", self.identity, ", ".join(
            f"{p.name} x{p.size} [{','.join(p.queues)}]" for p in self.pools))
        for warning in preflight.warnings(self.settings.shutdown_timeout, ABORT_GRACE):
            log.warning("%s", warning)
        self._set_title()
        try:
            while not self._finished():
                self._handle_signals()
                self._maintain()
                self._wait_and_read()
                self._reap()
        except BaseException:
            self._abandon()       # a bug here: children requeue their jobs and exit
            raise
        finally:
            self.signals.restore()
            if self.metrics is not None:             # metrics
                self.metrics.close()
        if self.halt_error:
            raise self.halt_error
        log.info("supervisor %s stopped", self.identity)
        return 0

    def all_children(self):
        """Every live child's record: workers and housekeepers."""
        keepers = [p.housekeeper for p in self.pools if p.housekeeper is not None]
        return self._workers() + keepers

    def _set_title(self):
        state = "stopping" if self.stopping_since is not None else (
            "quiet" if self.quiet else "running")
        proc.set_title(f"jobrunner supervisor {state} " + " ".join(
            f"[{p.name} x{p.size}]" for p in self.pools))

    # -- signals ---------------------------------------------------------------------------

    def _finished(self):
        """Stopping, and every child gone with its jobs handed over for recovery (unless the
        housekeeper that would recover them keeps failing)."""
        if self.stopping_since is None:
            return False
        return all(not p.children and p.housekeeper is None
                   and (not p.pending_recovery or p.keeper_boot.failures >= MAX_BOOT_FAILURES)
                   for p in self.pools)

    def _handle_signals(self):
        for sig in self.signals.take():
            handler = getattr(self, f"handle_{sig.name}", None)
            if handler is not None:             # SIGCHLD has none: it only wakes the loop
                handler(sig)

    # -- the main loop ---------------------------------------------------------------------

    def _maintain(self):
        now = time.monotonic()
        slept, self._last_pass = now - self._last_pass, now
        if slept > FROZEN_AFTER:
            self._rebase(slept)
        for record in self._workers():
            self._note_running(record, now)
        for pool in self.pools:
            self._spawn_missing(pool, now)
            self._police(pool, now)
            pool.flush_recovery()
            if self.stopping_since is None:
                pool.grant_recycle()
        if self.stopping_since is not None:
            self._drive_shutdown(now)
        if now - self._last_state >= 1.0:
            self._last_state = now
            self._send_states()

    def _rebase(self, slept):
        """The supervisor itself did not run for ``slept`` seconds (SIGSTOP, a frozen VM):
        its children's silence and run times are counted from now, not from before."""
        log.warning("the supervisor did not run for %.1fs (stopped or frozen); its children's "
                    "silence and run times count from now", slept)
        for record in self.all_children():
            record.rebase(slept)

    def _spawn_missing(self, pool, now):
        stopping = self.stopping_since is not None
        if pool.primary is None and pool.housekeeper is None \
                and pool.keeper_boot.may_spawn(now) and (not stopping or pool.pending_recovery):
            pool.housekeeper = spawn(self, pool, "housekeeper")
            if pool.housekeeper is None:
                pool.keeper_boot.next_spawn_at = now + 1.0
        if stopping:
            return
        while len(pool.active()) < pool.size and pool.boot.may_spawn(now):
            if pool.boot.failures and any(not r.ready for r in pool.active()):
                break                   # after a failure at start, one child at a time
            if spawn(self, pool, "worker") is None:
                pool.boot.next_spawn_at = now + 1.0
                break

    def _police(self, pool, now):
        """Kill children stuck past their job's timeout or silent past the heartbeat limit."""
        for record in list(pool.children.values()) + [pool.housekeeper]:
            if record is None or record.kill_reason:
                continue
            pool.note_healthy(record, now)
            reason = record.overdue(now, self.settings.timeout_grace,
                                    self.settings.heartbeat_timeout)
            if reason:
                record.kill(reason)

    def _drive_shutdown(self, now):
        workers_left = False
        for record in self._workers():
            workers_left = True
            if now >= self.deadline and record.abort_sent_at is None:
                record.signal(signal.SIGUSR1)     # requeue the running job and exit
                record.abort_sent_at = now
            elif record.abort_sent_at and now - record.abort_sent_at > ABORT_GRACE \
                    and not record.kill_reason:
                record.kill("shutdown")
        for pool in self.pools:
            keeper = pool.housekeeper
            if keeper is None:
                continue
            if not workers_left and not pool.pending_recovery and not keeper.stop_sent:
                self._send_state(pool, force=True)   # the last counts, for record_counts
                keeper.send_stop()
                keeper.abort_sent_at = now
            elif keeper.abort_sent_at and now - keeper.abort_sent_at > HOUSEKEEPER_GRACE \
                    and not keeper.kill_reason:
                keeper.kill("shutdown")

    def _wait_and_read(self):
        records = {r.channel.fileno(): r for r in self.all_children() if not r.channel.closed}
        writers = [fd for fd, r in records.items() if r.channel.pending_output]
        m_read, m_write = self.metrics.watch() if self.metrics else ([], [])   # metrics
        try:
            readable, writable, _ = select.select([self.signals.fileno(), *records, *m_read],
                                                  writers + m_write, [], TICK)
        except InterruptedError:
            return
        for fd in writable:
            if fd in records:
                records[fd].channel.flush()
        for fd in readable:
            if fd == self.signals.fileno():
                self.signals.drain()
            elif fd in records:
                self._handle_messages(records[fd])
        if self.metrics is not None:                 # metrics: answer scrapes, never blocks
            self.metrics.serve(readable, writable)

    def _handle_messages(self, record):
        now = time.monotonic()
        for message in record.channel.receive():
            record.last_beat = now      # any message shows the child alive: a "beat" too
            messages.dispatch(self, message, record, now)

    def handle_batch(self, message, record, now):
        if record.jobs is not None:
            self._count_starts(record, record.jobs.on_batch(message))

    def handle_cut(self, message, record, now):
        if record.jobs is not None:
            record.jobs.on_cut()

    def handle_dones(self, message, record, now):
        record.jobs_done += len(message.jobs)
        self.settled.dones(record.pool.backend_name, message.jobs)
        if self.metrics is not None:             # metrics: count outcomes
            for done in message.jobs:
                self.metrics.finished(record, done)

    def handle_ready(self, message, record, now):
        record.ready, record.ready_at = True, now
        if record.kind == "housekeeper":
            self._last_state = 0.0      # its first state now: the heartbeat starts

    def handle_recycle(self, message, record, now):
        record.wants_recycle = True
        record.recycle_reason = message.reason

    def handle_recovered(self, message, record, now):
        record.pool.recovery_done(message.serial)

    def handle_fatal(self, message, record, now):
        record.boot_error = (message.error or "unknown error", message.traceback or "")

    def _note_running(self, record, now):
        """Read which job a worker runs from its slot (``slot.py``); a job's time starts when
        the supervisor first sees it, so a timeout kill can only come late, never early."""
        if record.jobs is None:
            return
        if record.jobs.progressed():
            record.last_beat = now      # its "dones" line comes later, with the next fetch
        self._count_starts(record, record.jobs.newly_started())
        running = record.jobs.running()
        if running is not record.running:
            record.running = running
            record.running_since = now if running is not None else None
            record.running_epoch = time.time() if running is not None else None

    def _count_starts(self, record, jobs):
        if self.metrics is not None:             # metrics: count starts
            for job in jobs:
                if not job.bad:
                    self.metrics.started(record, job)

    def _reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._child_exited(pid, os.waitstatus_to_exitcode(status))

    def _child_exited(self, pid, code):
        record, pool = find_child(self.pools, pid)
        if record is None:
            return                        # not ours (e.g. a grandchild re-parented to us)
        self._handle_messages(record)     # what it wrote before it died: "batch", "fatal"...
        self._note_running(record, time.monotonic())
        if self.metrics is not None:      # metrics: a child exit; a job it ran is "lost"
            self.metrics.child_exited(record, code)
        record.channel.close()
        stopping = self.stopping_since is not None
        if record.kind == "housekeeper":
            pool.housekeeper_gone(keep_requests=not stopping)
            failure = exits.judge_housekeeper(pool, record, code, time.monotonic(), stopping)
        else:
            del pool.children[pid]
            request = exits.recovery_request(record)
            self.settled.recovering(pool.backend_name, request)     # a crashed run counts
            pool.owner().pending_recovery.append(request)
            if record.jobs is not None:
                record.jobs.close()
            failure = exits.judge_worker(pool, record, code, time.monotonic(), stopping)
        if failure is not None and self.halt_error is None:
            self.halt_error = failure
            self._begin_stop("giving up")

    def _send_states(self):
        for pool in self.pools:
            self._send_state(pool)

    def _send_state(self, pool, force=False):
        """Send the snapshot of ``pool``'s backend to its housekeeper (if it owns one); a
        housekeeper behind on its pipe gets the next one, unless ``force``."""
        keeper = pool.housekeeper
        if keeper is not None and keeper.ready and (force or not keeper.channel.pending_output):
            group = [p for p in self.pools if p.owner() is pool]   # the backend's pools
            state = SupervisorState.of_pools(
                group, identity=self.identity, hostname=self.hostname, pid=os.getpid(),
                started_at=self.started_at, quiet=self.quiet or self.stopping_since is not None,
                tag=self.settings.tag, settled=self.settled.recent(pool.backend_name),
                classes=self.settled.recent_classes(pool.backend_name))
            keeper.channel.send(State(state=state.as_dict()))

    # -- children --------------------------------------------------------------------------

    def _workers(self):
        return [r for p in self.pools for r in p.children.values()]

    def _abandon(self):
        """The supervisor itself failed: children requeue their jobs and exit on SIGUSR1."""
        for record in self.all_children():
            record.signal(signal.SIGUSR1)


"""The supervisor: forks a pool of children per backend, watches them, and answers signals.

Signals (handlers only record them; the main loop acts):
    TERM, INT   graceful stop: children finish their job; at the shutdown timeout the jobs
                still running are requeued and their children stopped. A second one stops now.
    TSTP        quiet: no new jobs; children stay up.
    TTIN, TTOU  one child more / fewer in every pool.
The supervisor holds no backend connection: each child opens its own after the fork, and a
housekeeper child per backend does the shared upkeep (heartbeat, recovery of dead children's jobs).
"""

import collections
import logging
import os
import select
import signal
import socket
import time
import uuid

from . import config, log as logsetup, proc
from .channel import Channel
from .child import ChildLoop
from .errors import JobrunnerError
from .housekeeper import HousekeeperLoop
from .pool import ChildRecord, Pool
from .state import RunningJob, SupervisorState

log = logging.getLogger("jobrunner.supervisor")

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGTSTP, signal.SIGTTIN,
                   signal.SIGTTOU, signal.SIGCHLD)
#: Seconds a child gets to requeue its job after the abort signal, before SIGKILL.
ABORT_GRACE = 3.0
#: Seconds housekeepers get to finish recovery work at shutdown.
HOUSEKEEPER_GRACE = 10.0


class PoolBootError(JobrunnerError):
    """A pool's children keep dying before they are ready."""


class Supervisor:
    """Runs pools of children for a registry until stopped; see the module docstring."""

    def __init__(self, registry, settings=None, **kwargs):
        self.registry = registry
        self.settings = settings or config.resolve(kwargs)
        self.pools = []
        self.signals = collections.deque()
        self.stopping_since = None
        self.deadline = None
        self.quiet = False
        self.halt_error = None
        self.hostname = socket.gethostname()
        self.identity = f"{self.hostname}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.started_at = time.time()
        self._wakeup = None
        self._last_state = 0.0

    # -- public ----------------------------------------------------------------------------

    def run(self):
        """Run until stopped; returns the exit code (0 after a clean stop)."""
        self.pools = self._make_pools()
        if not self.pools:
            raise JobrunnerError("nothing to run: no registered worker serves the chosen queues")
        self._install_signals()
        log.info("supervisor %s starting: %s", self.identity, ", ".join(
            f"{p.name} x{p.size} [{','.join(p.queues)}]" for p in self.pools))
        try:
            while not self._finished():
                self._handle_signals()
                self._maintain()
                self._wait_and_read()
                self._reap()
        except PoolBootError as exc:
            self.halt_error = exc
            self._kill_everything()
        finally:
            self._restore_signals()
        if self.halt_error:
            raise self.halt_error
        log.info("supervisor %s stopped", self.identity)
        return 0

    # -- set-up ----------------------------------------------------------------------------

    def _make_pools(self):
        from .backends import make_backend
        wanted = self.settings.queues
        pools = []
        for name in self.registry.backends():
            queues = self.registry.queues(name)
            if wanted:
                queues = [q for q in wanted if q in queues]
            if queues:
                backend = make_backend(name, self.settings, self.registry)
                pools.append(Pool(name=name, backend=backend, queues=queues,
                                  size=self.settings.processes))
        return pools

    def _install_signals(self):
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        self._wakeup = (read_fd, write_fd)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, self._record_signal)

    def _record_signal(self, signum, frame):
        self.signals.append(signum)      # only record: the main loop acts on it

    def _restore_signals(self):
        signal.set_wakeup_fd(-1)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        if self._wakeup:
            for fd in self._wakeup:
                os.close(fd)
            self._wakeup = None

    # -- the main loop ---------------------------------------------------------------------

    def _finished(self):
        if self.stopping_since is None:
            return False
        return all(not p.children and p.housekeeper is None for p in self.pools)

    def _handle_signals(self):
        while self.signals:
            sig = self.signals.popleft()
            if sig in (signal.SIGTERM, signal.SIGINT):
                self._begin_stop(signal.Signals(sig).name)
            elif sig == signal.SIGTSTP:
                self._go_quiet()
            elif sig == signal.SIGTTIN:
                self._resize(+1)
            elif sig == signal.SIGTTOU:
                self._resize(-1)

    def _begin_stop(self, name):
        now = time.monotonic()
        if self.stopping_since is None:
            self.stopping_since = now
            self.deadline = now + self.settings.shutdown_timeout
            log.info("%s: stopping; running jobs have %.0fs to finish", name,
                     self.settings.shutdown_timeout)
            for record in self._workers():
                self._send_stop(record)
        else:
            log.info("%s again: stopping now; running jobs go back to their queues", name)
            self.deadline = now

    def _go_quiet(self):
        if not self.quiet:
            log.info("TSTP: quiet; no new jobs will start")
        self.quiet = True
        for record in self._workers():
            record.channel.send("quiet")

    def _resize(self, step):
        for pool in self.pools:
            pool.size = max(1, pool.size + step)
            if step < 0 and len(pool.children) > pool.size:
                idle = sorted(pool.children.values(), key=lambda r: r.running is not None)
                self._send_stop(idle[0])
        log.info("pool sizes now %s", ", ".join(f"{p.name}={p.size}" for p in self.pools))

    def _maintain(self):
        now = time.monotonic()
        for pool in self.pools:
            if self.stopping_since is None:
                self._spawn_missing(pool, now)
            self._police(pool, now)
            self._flush_recovery(pool)
        if self.stopping_since is not None:
            self._drive_shutdown(now)
        if now - self._last_state >= 1.0:
            self._last_state = now
            self._send_states()

    def _spawn_missing(self, pool, now):
        if pool.housekeeper is None:
            pool.housekeeper = self._spawn(pool, "housekeeper")
        active = [r for r in pool.children.values() if not r.stop_sent]
        while len(active) < pool.size and now >= pool.next_spawn_at:
            active.append(self._spawn(pool, "worker"))

    def _police(self, pool, now):
        """Kill children stuck past their job's timeout or silent past the heartbeat limit."""
        for record in list(pool.children.values()) + [pool.housekeeper]:
            if record is None or record.kill_reason:
                continue
            timeout = record.running and record.running.get("timeout")
            if record.running is not None:
                if timeout and now - record.running_since > timeout + self.settings.timeout_grace:
                    self._kill(record, "timeout")
            elif now - record.last_beat > self.settings.heartbeat_timeout:
                self._kill(record, "heartbeat")

    def _drive_shutdown(self, now):
        workers_left = False
        for record in self._workers():
            workers_left = True
            if now >= self.deadline and record.abort_sent_at is None:
                self._signal(record, signal.SIGUSR1)     # requeue the running job and exit
                record.abort_sent_at = now
            elif record.abort_sent_at and now - record.abort_sent_at > ABORT_GRACE \
                    and not record.kill_reason:
                self._kill(record, "shutdown")
        for pool in self.pools:
            keeper = pool.housekeeper
            if keeper is None:
                continue
            if not workers_left and not pool.pending_recovery and not keeper.stop_sent:
                self._send_stop(keeper)
                keeper.abort_sent_at = now
            elif keeper.abort_sent_at and now - keeper.abort_sent_at > HOUSEKEEPER_GRACE \
                    and not keeper.kill_reason:
                self._kill(keeper, "shutdown")

    def _wait_and_read(self):
        records = {r.channel.fileno(): r for r in self._all_children() if not r.channel.closed}
        try:
            readable, _, _ = select.select([self._wakeup[0], *records], [], [], 0.25)
        except InterruptedError:
            return
        for fd in readable:
            if fd == self._wakeup[0]:
                _drain(fd)
            else:
                self._handle_messages(records[fd])

    def _handle_messages(self, record):
        now = time.monotonic()
        for message in record.channel.receive():
            record.last_beat = now
            kind = message["t"]
            if kind == "start":
                record.running, record.running_since = message, now
                record.running_epoch = time.time()
            elif kind == "done":
                record.running = record.running_since = None
            elif kind == "ready":
                record.ready = True
                if self.quiet and record.kind == "worker":
                    record.channel.send("quiet")
            elif kind == "recycle":
                self._grant_recycle(record)

    def _grant_recycle(self, record):
        pool = record.pool
        if pool.recycling in pool.children or self.stopping_since is not None:
            return     # one child at a time; it asks again after its next job
        pool.recycling = record.pid
        log.info("recycling %s child %s", pool.name, record.pid)
        self._send_stop(record)

    def _reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._child_exited(pid, status)

    def _child_exited(self, pid, status):
        record, pool = self._find(pid)
        if record is None:
            return                        # not ours (e.g. a grandchild re-parented to us)
        record.channel.close()
        code = os.waitstatus_to_exitcode(status)
        if record.kind == "housekeeper":
            pool.housekeeper = None
            if self.stopping_since is None or code != 0:
                log.warning("%s housekeeper %s exited with %s", pool.name, pid, code)
            return
        del pool.children[pid]
        self._queue_recovery(pool, record)
        expected = record.stop_sent or record.kill_reason in ("shutdown",)
        if not expected:
            log.error("%s child %s exited unexpectedly (%s)%s", pool.name, pid,
                      _describe_exit(code), f" running job {record.running['id']}"
                      if record.running else "")
            if pool.note_exit(record, time.monotonic()):
                raise PoolBootError(
                    f"{pool.name} children keep dying at start ({pool.boot_failures} in a row, "
                    f"last: {_describe_exit(code)}); see the errors above")

    def _queue_recovery(self, pool, record):
        tokens = [record.running.get("token")] if record.running else []
        crashed = record.kill_reason not in (None, "shutdown") or (
            record.running is not None and record.kill_reason is None)
        pool.pending_recovery.append({"child_id": record.child_id, "tokens": tokens,
                                      "crashed": bool(crashed)})

    def _flush_recovery(self, pool):
        keeper = pool.housekeeper
        while pool.pending_recovery and keeper is not None and keeper.ready \
                and not keeper.channel.closed:
            request = pool.pending_recovery.pop(0)
            keeper.channel.send("recover", **request)

    def _send_states(self):
        for pool in self.pools:
            keeper = pool.housekeeper
            if keeper is None or not keeper.ready:
                continue
            busy = tuple(RunningJob(child_id=r.child_id, job_id=r.running.get("id"),
                                    worker=r.running.get("worker"),
                                    queue=r.running.get("queue"),
                                    started_at=r.running_epoch, token=r.running.get("token"))
                         for r in pool.children.values() if r.running)
            state = SupervisorState(
                identity=self.identity, hostname=self.hostname, pid=os.getpid(),
                started_at=self.started_at, queues=pool.queues, concurrency=pool.size,
                quiet=self.quiet or self.stopping_since is not None, busy=busy,
                children=tuple(r.child_id for r in pool.children.values()),
                tag=self.settings.tag)
            keeper.channel.send("state", state=state.as_dict())

    # -- children --------------------------------------------------------------------------

    def _spawn(self, pool, kind):
        pool.serial += 1
        ours, theirs = Channel.pair()
        parent_pid = os.getpid()
        pid = os.fork()
        if pid == 0:
            ours.close()
            self._become_child(pool, kind, theirs, parent_pid)   # never returns
        theirs.close()
        child_id = f"{self.identity}:{pid}"
        record = ChildRecord(pid=pid, child_id=child_id, pool=pool, channel=ours, kind=kind)
        if kind == "worker":
            pool.children[pid] = record
        return record

    def _become_child(self, pool, kind, channel, parent_pid):
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in HANDLED_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            for fd in self._wakeup:
                os.close(fd)
            for record in self._all_children():
                record.channel.close()
            proc.die_with_parent(parent_pid)
            label = f"{pool.name}.{kind if kind == 'housekeeper' else pool.serial}"
            logsetup.set_label(label)
            child_id = f"{self.identity}:{os.getpid()}"
            if kind == "housekeeper":
                loop = HousekeeperLoop(pool.backend, self.identity, channel, label, parent_pid)
            else:
                loop = ChildLoop(pool.backend, self.registry, self.settings, pool.queues,
                                 child_id, channel, label)
            code = loop.run()
        except BaseException:
            log.exception("child crashed")
            code = 3
        finally:
            logging.shutdown()
            os._exit(code)

    def _workers(self):
        return [r for p in self.pools for r in p.children.values()]

    def _all_children(self):
        keepers = [p.housekeeper for p in self.pools if p.housekeeper is not None]
        return self._workers() + keepers

    def _find(self, pid):
        for pool in self.pools:
            if pid in pool.children:
                return pool.children[pid], pool
            if pool.housekeeper is not None and pool.housekeeper.pid == pid:
                return pool.housekeeper, pool
        return None, None

    def _send_stop(self, record):
        record.stop_sent = True
        record.channel.send("stop")

    def _signal(self, record, sig):
        try:
            os.kill(record.pid, sig)
        except ProcessLookupError:
            pass

    def _kill(self, record, reason):
        record.kill_reason = reason
        if reason != "shutdown":
            log.error("killing %s child %s: %s%s", record.pool.name, record.pid, reason,
                      f" (job {record.running['id']} of {record.running['worker']})"
                      if record.running else "")
        self._signal(record, signal.SIGKILL)

    def _kill_everything(self):
        for record in self._all_children():
            self._signal(record, signal.SIGKILL)
        for record in self._all_children():
            try:
                os.waitpid(record.pid, 0)
            except ChildProcessError:
                pass


def _drain(fd):
    try:
        while os.read(fd, 512):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def _describe_exit(code):
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"

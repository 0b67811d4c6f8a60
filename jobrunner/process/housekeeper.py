"""The housekeeper child: runs a backend's upkeep for the supervisor (heartbeat, recovery...)."""

import logging
import os
import select
import signal
import time

from jobrunner.process import proc
from jobrunner.process.signals import DUMP_STACK, install_stack_dump, unblock_in_child
from jobrunner.process import messages
from jobrunner.process.messages import Beat, Ready, Recovered
from jobrunner.process.outage import OutageNotice
from jobrunner.process.state import SupervisorState

log = logging.getLogger("jobrunner.housekeeper")

TICK_SECONDS = 1.0
#: Seconds a housekeeper whose supervisor died gets to finish recoveries and clear its heartbeat.
ORPHAN_GRACE = 5.0
#: A failure that is not a lost connection is logged in full once, then at most this often.
REPEAT_LOG_SECONDS = 60.0
#: What a remote signal (Sidekiq's API, Web UI) asks of the supervisor. TTIN is Sidekiq's
#: ``Process#dump_threads``, "log every thread's backtrace": the supervisor's DUMP_STACK,
#: not one child more (that stays the meaning of a local ``kill -TTIN``).
_REMOTE_SIGNALS = {"TSTP": signal.SIGTSTP, "TERM": signal.SIGTERM, "TTIN": DUMP_STACK,
                   "TTOU": signal.SIGTTOU, "USR1": signal.SIGTSTP, "INT": signal.SIGINT}


class HousekeeperLoop:
    """Keeps one backend's shared state in order for its supervisor.

    The supervisor sends ``state`` snapshots and ``recover`` requests down the pipe; this loop
    applies them over its own connection and keeps trying through backend outages, so no
    recovery request is lost while the server restarts. Any other error in a duty (a bug, a
    key of the wrong type in Redis) is logged and the duty is tried again at the next tick: the
    heartbeat and the recovery of other jobs must not stop because one step fails. A recovery
    request that fails that way is dropped after logging (the job's lease, or the heartbeat
    expiry scan of another supervisor, still recovers it), so it cannot block the ones behind.
    """

    def __init__(self, backend, identity, channel, label, parent_pid):
        self.backend = backend
        self.identity = identity
        self.channel = channel
        self.label = label
        self.parent_pid = parent_pid
        self.keeper = None
        self.state = None
        self.pending = []        # recover requests not yet applied
        self.ready = False
        self.stopping = False
        self.counts_recorded = False     # the last snapshot's counts, written at the stop
        self._logged = {}        # error text -> monotonic time it was last logged
        self.outage = OutageNotice(log, label)

    def run(self):
        for sig in (signal.SIGINT, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU,
                    signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)   # the supervisor stops us through the pipe
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # USR1: the supervisor died (parent-death signal) or gave up. The pipe's EOF ends the
        # loop cleanly (recoveries done, heartbeat cleared, so Sidekiq's UI shows no ghost);
        # the alarm bounds that if a backend call hangs.
        signal.signal(signal.SIGUSR1, self._on_orphaned)
        signal.signal(signal.SIGALRM, _exit_now)
        install_stack_dump()
        unblock_in_child()
        proc.set_title(f"jobrunner {self.label}")
        self.channel.send(Ready())
        self.ready = True
        next_tick = 0.0
        stop_seen = False
        while True:
            wait = max(0.0, next_tick - time.monotonic())
            # at EOF the pipe is always readable: then just sleep until the next tick
            select.select([] if self.channel.closed else [self.channel], [], [], wait)
            had_state = self.state is not None
            self._read_channel()
            if (self.stopping and not stop_seen) or (self.state and not had_state):
                next_tick = 0.0          # the first beat, or the last recoveries, now
                stop_seen = self.stopping
            if time.monotonic() >= next_tick:
                self._work()
                next_tick = time.monotonic() + TICK_SECONDS
                self.channel.send(Beat())
            if self.stopping and not self.pending:
                break
        self._close()
        return 0

    def _on_orphaned(self, signum, frame):
        if not self.stopping:
            self.stopping = True
            signal.setitimer(signal.ITIMER_REAL, ORPHAN_GRACE)

    def _read_channel(self):
        for message in self.channel.receive():
            messages.dispatch(self, message)
        if self.channel.closed:
            self.stopping = True

    def handle_state(self, message):
        self.state = SupervisorState.from_dict(message.state)

    def handle_recover(self, message):
        self.pending.append(message)

    def handle_stop(self, message):
        self.stopping = True

    def _work(self):
        try:
            if self.keeper is None:
                self.keeper = self.backend.housekeeper(self.identity)
            self._recover_pending()
            if self.state is not None and not self.stopping:
                for name in self.keeper.tick(self.state) or ():
                    self._signal_supervisor(name)
            elif self.state is not None and not self.pending and not self.counts_recorded:
                # The supervisor's last snapshot, sent with the stop: the runs since our
                # last tick.
                self.keeper.record_counts(self.state)
                self.counts_recorded = True
            self.outage.ended(self.backend.name)
        except self.backend.connection_errors as exc:
            self.outage.failed("backend unavailable; will retry every tick", str(exc))
            self._drop_keeper()
            if self.stopping and self.channel.closed:
                self.pending.clear()   # nobody to report to; heartbeat expiry recovers them
        except Exception as exc:
            self._log_failure("housekeeping failed", exc)
            if self.keeper is None and self.stopping:
                self.pending.clear()   # it cannot even start: leases and heartbeats recover

    def _recover_pending(self):
        while self.pending:
            request = self.pending[0]
            try:
                self.keeper.recover(request.child_id, request.tokens, request.crashed,
                                    reason=request.reason, held=request.held,
                                    finished=request.finished)
                if request.crashed:
                    log.info("%s: recovered the jobs of child %s (%s)", self.label,
                             request.child_id, request.reason)
            except self.backend.connection_errors:
                raise                   # kept: tried again once the connection is back
            except Exception as exc:
                self._log_failure(f"cannot recover the jobs of child {request.child_id} "
                                  f"(tokens {request.tokens!r}); leaving them to lease or "
                                  "heartbeat expiry", exc)
            self.pending.pop(0)
            self.channel.send(Recovered(serial=request.serial))

    def _log_failure(self, what, exc):
        text = f"{what}: {type(exc).__name__}: {exc}"
        now = time.monotonic()
        last = self._logged.get(text)
        if last is None:
            log.exception("%s: %s", self.label, text)
        elif now - last < REPEAT_LOG_SECONDS:
            return
        else:
            log.error("%s: %s (again)", self.label, text)
        self._logged[text] = now

    def _signal_supervisor(self, name):
        sig = _REMOTE_SIGNALS.get(name)
        if sig is None:
            log.warning("ignoring unknown remote signal %r", name)
            return
        if os.getppid() != self.parent_pid:
            return                      # the supervisor is gone; we are about to be too
        log.info("remote signal %s received; passing it to the supervisor", name)
        os.kill(self.parent_pid, sig)

    def _drop_keeper(self):
        if self.keeper is not None:
            try:
                self.keeper.close()
            except Exception:
                pass
            self.keeper = None

    def _close(self):
        if self.keeper is not None:
            try:
                self.keeper.close()
            except Exception as exc:
                log.warning("%s: could not clear the heartbeat at exit: %s", self.label, exc)
            self.keeper = None


def _exit_now(signum, frame):
    os._exit(1)

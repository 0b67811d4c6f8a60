"""The housekeeper child: runs a backend's upkeep for the supervisor (heartbeat, recovery...)."""

import logging
import os
import select
import signal
import time

from . import proc
from .state import SupervisorState

log = logging.getLogger("jobrunner.housekeeper")

TICK_SECONDS = 1.0
_REMOTE_SIGNALS = {"TSTP": signal.SIGTSTP, "TERM": signal.SIGTERM, "TTIN": signal.SIGTTIN,
                   "TTOU": signal.SIGTTOU, "USR1": signal.SIGTSTP, "INT": signal.SIGINT}


class HousekeeperLoop:
    """Keeps one backend's shared state in order for its supervisor.

    The supervisor sends ``state`` snapshots and ``recover`` requests down the pipe; this loop
    applies them over its own connection and keeps trying through backend outages, so no
    recovery request is lost while the server restarts.
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
        self.stopping = False

    def run(self):
        for sig in (signal.SIGINT, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU,
                    signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)   # the supervisor stops us through the pipe
        proc.set_title(f"jobrunner {self.label}")
        self.channel.send("ready")
        next_tick = 0.0
        while True:
            select.select([self.channel], [], [], max(0.0, next_tick - time.monotonic()))
            self._read_channel()
            if time.monotonic() >= next_tick or self.stopping:
                self._work()
                next_tick = time.monotonic() + TICK_SECONDS
                self.channel.send("beat")
            if self.stopping and not self.pending:
                break
        self._close()
        return 0

    def _read_channel(self):
        for message in self.channel.receive():
            kind = message["t"]
            if kind == "state":
                self.state = SupervisorState.from_dict(message["state"])
            elif kind == "recover":
                self.pending.append(message)
            elif kind == "stop":
                self.stopping = True
        if self.channel.closed:
            self.stopping = True

    def _work(self):
        try:
            if self.keeper is None:
                self.keeper = self.backend.housekeeper(self.identity)
            while self.pending:
                request = self.pending[0]
                self.keeper.recover(request["child_id"], request["tokens"], request["crashed"])
                self.pending.pop(0)
            if self.state is not None and not self.stopping:
                for name in self.keeper.tick(self.state) or ():
                    self._signal_supervisor(name)
        except self.backend.connection_errors as exc:
            log.warning("%s: backend connection lost (%s); will retry", self.label, exc)
            self._drop_keeper()
            if self.stopping and self.channel.closed:
                self.pending.clear()   # nobody to report to; heartbeat expiry recovers them

    def _signal_supervisor(self, name):
        sig = _REMOTE_SIGNALS.get(name)
        if sig is None:
            log.warning("ignoring unknown remote signal %r", name)
            return
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
            except self.backend.connection_errors:
                pass
            self.keeper = None

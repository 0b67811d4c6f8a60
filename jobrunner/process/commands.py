"""What the supervisor does on each signal, by name: ``handle_<SIGNAL>`` (see ``signals.py``).

The main loop (``supervisor.py``) takes the recorded signals and calls these; none runs in a
signal handler, so they may log, write to pipes and signal children.
"""

import logging
import time

from jobrunner.process.messages import Quiet
from jobrunner.process.signals import DUMP_STACK

log = logging.getLogger("jobrunner.supervisor")


class SignalActions:
    """The signal handlers of ``Supervisor``, over its pools, flags and children."""

    def handle_SIGTERM(self, sig):
        self._begin_stop(sig.name)

    handle_SIGINT = handle_SIGTERM

    def handle_SIGTTIN(self, sig):
        self._resize(+1)

    def handle_SIGTTOU(self, sig):
        self._resize(-1)

    def _begin_stop(self, reason):
        now = time.monotonic()
        if self.stopping_since is None:
            self.stopping_since = now
            self.deadline = now + self.settings.shutdown_timeout
            log.info("%s: stopping; running jobs have %.1fs to finish", reason,
                     self.settings.shutdown_timeout)
            for record in self._workers():
                if not record.stop_sent:
                    record.send_stop()
            self._last_state = 0.0          # tell the backends now
            self._set_title()
        elif reason in ("SIGTERM", "SIGINT"):
            log.info("%s again: stopping now; running jobs go back to their queues", reason)
            self.deadline = min(self.deadline, now)

    def handle_SIGTSTP(self, sig):
        """Quiet: no new jobs; the children stay up."""
        if self.stopping_since is not None:
            return
        if not self.quiet:
            log.info("SIGTSTP: quiet; no new jobs will start")
            self._last_state = 0.0
        self.quiet = True
        for record in self._workers():
            record.channel.send(Quiet())
        self._set_title()

    def _resize(self, step):
        if self.stopping_since is not None:
            return
        for pool in self.pools:
            pool.resize(step)
        log.info("pool sizes now %s", ", ".join(f"{p.name}={p.size}" for p in self.pools))
        self._last_state = 0.0
        self._set_title()

    def handle_SIGUSR2(self, sig):
        """Dump stacks: each worker child writes the stack of its running job to stderr;
        the pools keep their size (a remote TTIN arrives as this, see ``housekeeper.py``)."""
        workers = self._workers()
        log.info("%s: the stacks of children %s follow on stderr", sig.name,
                 ", ".join(str(record.pid) for record in workers) or "(none)")
        for record in workers:
            record.signal(DUMP_STACK)

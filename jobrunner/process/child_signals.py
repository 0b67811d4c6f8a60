"""A child's own signal handlers, set before its signals are unblocked (see ``signals.py``).

    TERM        finish the running job, then leave (systemd may send it to the whole group)
    USR1        abort: the running job goes back to its queue unchanged, then leave. The
                supervisor sends it at the shutdown deadline; the kernel sends it when the
                supervisor dies (``PR_SET_PDEATHSIG``), and then a job that will not stop is
                given ``ORPHAN_GRACE`` seconds before the child exits anyway.
    ALRM        the job ran past its worker's ``timeout``: ``JobTimeout`` is raised in it
    USR2        write the stack of the running job to stderr (``faulthandler``, so it works
                inside a job stuck in C code too); the supervisor forwards it on "dump threads"
    INT, TSTP, TTIN, TTOU  ignored: they are meant for the supervisor
"""

import os
import signal

from jobrunner.errors import JobTimeout, ShutdownRequested
from jobrunner.process.signals import install_stack_dump, unblock_in_child

#: Seconds a child whose supervisor died gives a job that ignores the abort before it exits.
ORPHAN_GRACE = 5.0


class ChildSignals:
    """The handlers of ``ChildLoop``: they set its flags (``stopping``, ``orphaned``) and raise
    into a running job (``in_job``) only where the module docstring says."""

    def _install_signals(self):
        for sig in (signal.SIGINT, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGUSR1, self._on_abort)
        signal.signal(signal.SIGALRM, self._on_alarm)
        install_stack_dump()
        unblock_in_child()

    def _on_term(self, signum, frame):
        self.stopping = True          # finish the running job, then leave

    def _on_abort(self, signum, frame):
        self.stopping = True
        if self.parent_pid is not None and not self.orphaned \
                and os.getppid() != self.parent_pid:
            # The supervisor is gone and nobody will SIGKILL us: bound the wait ourselves.
            self.orphaned = True
            signal.signal(signal.SIGALRM, _exit_now)
            signal.setitimer(signal.ITIMER_REAL, ORPHAN_GRACE)
        if self.in_job:               # the shutdown timeout is over: requeue the job now
            self.in_job = False
            raise ShutdownRequested()

    def _on_alarm(self, signum, frame):
        if self.in_job:
            raise JobTimeout("the job ran past its worker's timeout")

    def _disarm_alarm(self):
        """No job's timeout may fire from now on (``alarm_armed``: one may be set); the
        orphan's exit timer, once set, stays."""
        if self.alarm_armed and not self.orphaned:
            arm_alarm(None)
        self.alarm_armed = False


def _exit_now(signum, frame):
    os._exit(1)


def arm_alarm(seconds):
    """Raise ``JobTimeout`` in the running job in ``seconds`` (None or 0: no alarm)."""
    signal.setitimer(signal.ITIMER_REAL, seconds or 0)

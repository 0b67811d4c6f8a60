"""The supervisor's signals: handlers only record them; the main loop acts on them by name.

As in gunicorn's arbiter and Sidekiq's CLI, a handler does nothing but append the signal to a
queue; ``signal.set_wakeup_fd`` makes the main loop's ``select`` return at once. While forking,
the handled signals are blocked, so a signal sent in that window is neither lost by the parent
nor run by the child with the parent's handler (dramatiq's ``try_block_signals``).

    TERM, INT   graceful stop; a second one stops now (still requeueing)
    TSTP        quiet: no new jobs
    TTIN, TTOU  one child more / fewer in every pool
    USR2        dump stacks: every worker child writes the stack of its running job to stderr
                (what a TTIN sent through Sidekiq's API or Web UI, "dump threads", becomes)
    CHLD        a child exited: reap it
"""

import collections
import contextlib
import faulthandler
import os
import signal
import sys

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU,
           signal.SIGUSR2, signal.SIGCHLD)
#: The signal that makes a child write its stack (Sidekiq's TTIN means this, not "one more").
DUMP_STACK = signal.SIGUSR2
#: What a child must not run with its parent's handlers before it sets its own.
CHILD_BLOCKED = HANDLED + (signal.SIGUSR1, signal.SIGALRM)


class SignalQueue:
    """Records the handled signals for the main loop; see the module docstring."""

    def __init__(self):
        self.pending = collections.deque()
        self._wakeup = None

    def install(self):
        """Handle the signals from now on; a second call changes nothing."""
        if self._wakeup is not None:
            return
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        self._wakeup = (read_fd, write_fd)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for sig in HANDLED:
            signal.signal(sig, self._record)

    def _record(self, signum, frame):
        self.pending.append(signum)        # NO LOGGING here: only record; the loop acts

    def fileno(self):
        """The wake-up pipe's read end, for ``select``."""
        return self._wakeup[0]

    def drain(self):
        """Empty the wake-up pipe (the signals themselves are in ``pending``)."""
        try:
            while os.read(self._wakeup[0], 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def take(self):
        """The recorded signals, oldest first, as ``signal.Signals`` members."""
        while self.pending:
            yield signal.Signals(self.pending.popleft())

    def restore(self):
        signal.set_wakeup_fd(-1)
        for sig in HANDLED:
            signal.signal(sig, signal.SIG_DFL)
        self._close_pipe()

    @contextlib.contextmanager
    def blocked(self):
        """Block the handled signals (and the child's own) around ``os.fork``."""
        old = signal.pthread_sigmask(signal.SIG_BLOCK, CHILD_BLOCKED)
        try:
            yield
        finally:
            # In the parent only: the child leaves through os._exit, never through here.
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def reset_in_child(self):
        """In a new child: drop the parent's handlers and wake-up pipe; signals stay blocked
        until the child has installed its own handlers and calls ``unblock_in_child``."""
        signal.set_wakeup_fd(-1)
        for sig in HANDLED:
            signal.signal(sig, signal.SIG_DFL)
        self.pending.clear()
        self._close_pipe()

    def _close_pipe(self):
        if self._wakeup:
            for fd in self._wakeup:
                os.close(fd)
            self._wakeup = None


def install_stack_dump():
    """In a child: write every thread's stack to stderr on ``DUMP_STACK``. ``faulthandler``
    does it inside the signal handler itself, in C, so it works while the job is stuck in a
    C call and takes no lock a job may hold (a Python handler that logged could deadlock on
    the logging lock the job was holding)."""
    faulthandler.register(DUMP_STACK, file=sys.stderr, all_threads=True, chain=False)


def unblock_in_child():
    """Let signals in once a child's own handlers are set (see ``SignalQueue.blocked``)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, CHILD_BLOCKED)


def describe_exit(code):
    """``os.waitstatus_to_exitcode`` result in words."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"

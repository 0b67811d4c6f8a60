"""A child's batch guard: the unstarted rest of a batch goes back once its budget is spent, even
while a job of the batch is still running.

Between two jobs the child's loop does this itself (``Prefetch.batch_is_over``). A job that runs
long, though, would hold the jobs fetched behind it until it ends, while another child sits idle.
So while a batch has jobs after the running one, a thread of the child waits for the batch's
deadline (its fetch plus ``Prefetch.BUDGET``) and, if the child is then inside a job's own code,
puts the rest back (``put_back``: "cut" to the supervisor, then the requeue), and the loop runs
none of it. It also hands the running job to ``running`` (the child names it in its process
title, which it sets itself only for the first job of a batch).

The child's main thread holds ``lock`` at all times except while the user's code runs (a job's
middleware and ``handle``), so the guard touches the consumer and the pipe only when the main
thread cannot. If the lock is taken at the deadline, the child is between jobs, and its loop's own
check cuts the batch, or is about to enter the next job's code: the thread waits for the lock
until the batch is over (it then does nothing) or that job's code runs. The thread blocks every
signal: they must reach the main thread, where a timeout or an
abort interrupts the job.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any, Callable, Sequence

log = logging.getLogger("jobrunner.child")

#: Seconds between two looks, while the thread waits for the lock, at whether the batch is over.
LOCK_RETRY = 0.001


class BatchGuard:
    """Puts a batch's unstarted jobs back at its deadline, from a thread of its own."""

    def __init__(self, put_back: Callable[[Sequence[Any]], None],
                 errors: tuple[type[BaseException], ...] = (),
                 at_deadline: Callable[[], None] = lambda: None,
                 running: Callable[[Any], None] = lambda job: None):
        """``at_deadline``: called from the thread at each deadline, whatever the main thread
        is doing (the child writes the log lines its batch held): it must be thread-safe.
        ``running``: called from the thread, holding ``lock``, with the job whose own code
        runs at the deadline."""
        self.lock = threading.Lock()     # the main thread's, but while the user's code runs
        self.lock.acquire()
        self._put_back = put_back
        self._at_deadline = at_deadline
        self._running = running
        self._errors = errors            # what a failed put-back may raise: logged, not fatal
        self._changed = threading.Condition(threading.Lock())
        self._jobs: Sequence[Any] | None = None
        self._deadline: float | None = None
        self._next = 0                   # index of the batch's first unstarted job
        self._waiting_for_ever = True    # the thread sleeps with no deadline: wake it on arm
        self.took_back = False
        self._thread: threading.Thread | None = None
        self._unlocked = _Unlocked(self.lock)    # made once: it is entered for every job

    # -- the main thread, holding ``lock`` -----------------------------------------------------

    def arm(self, jobs: Sequence[Any], deadline: float) -> None:
        """Guard ``jobs``, a batch whose rest must be back by ``deadline`` (monotonic)."""
        if self._thread is None:
            self._start()
        with self._changed:
            self._jobs, self._next, self.took_back = jobs, 0, False
            self._deadline = deadline
            if self._waiting_for_ever:
                self._changed.notify()

    def starting(self, index: int) -> bool:
        """Job ``index`` of the batch is about to run: False when the guard took it back."""
        if self.took_back:
            return False
        self._next = index + 1
        return True

    def disarm(self) -> None:
        """The batch is over (run, cut by the loop, or broken off)."""
        with self._changed:
            self._jobs = self._deadline = None
            # The flag is the guarded batch's: a later batch of one arms nothing, and a stale
            # True would skip its job and leave it leased until the lease ran out.
            self.took_back = False

    def user_code(self) -> "_Unlocked":
        """``with guard.user_code():`` around the user's code of one job."""
        return self._unlocked

    # -- the guard's thread --------------------------------------------------------------------

    def _start(self) -> None:
        # Started with every signal blocked, so that it inherits the mask from its first
        # instruction; the main thread's own mask is put back at once.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            self._thread = threading.Thread(target=self._run, name="batch-guard", daemon=True)
            self._thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _run(self) -> None:
        while True:
            jobs = self._wait_for_deadline()
            try:
                self._at_deadline()
            except Exception:         # a log stream that fails must not end the guard
                pass
            if not self._lock_in_job(jobs):
                continue              # the batch is over: the loop's own check cut its rest
            try:
                if jobs is self._jobs and not self.took_back:
                    try:
                        self._running(jobs[self._next - 1])
                    except Exception:     # a title that cannot be set must not end the guard
                        pass
                    self._take_back(jobs[self._next:])
            finally:
                self.lock.release()

    def _lock_in_job(self, jobs: Sequence[Any]) -> bool:
        """Take ``lock``, which the main thread gives up only inside a job's code; False once
        ``jobs`` is no longer the batch guarded. Waiting, not one try: the job that was about
        to start at the deadline may run long, and the rest must not wait for its end."""
        while not self.lock.acquire(timeout=LOCK_RETRY):
            if self._jobs is not jobs:
                return False
        return True

    def _wait_for_deadline(self) -> Sequence[Any]:
        """Sleep until an armed batch reaches its deadline; returns that batch."""
        with self._changed:
            while True:
                deadline = self._deadline
                self._waiting_for_ever = deadline is None
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0 and self._jobs is not None:
                        self._deadline = None
                        return self._jobs
                self._changed.wait(None if deadline is None else max(left, 0.0))

    def _take_back(self, rest: Sequence[Any]) -> None:
        if not rest:
            return
        try:
            self._put_back(rest)
        except self._errors as exc:
            # Still leased to this child: the loop, whose budget is spent, cuts them itself.
            log.warning("could not put back the rest of a batch behind a long job: %s", exc)
            return
        self.took_back = True


class _Unlocked:
    """Releases the guard's lock for the duration of a ``with`` block."""

    def __init__(self, lock: threading.Lock):
        self._lock = lock

    def __enter__(self) -> None:
        self._lock.release()

    def __exit__(self, *exc: object) -> None:
        self._lock.acquire()

"""The loop inside one child: fetch -> run -> ack / retry / bury, reporting over its pipe.

Its signals (TERM finishes the job, USR1 aborts it, ALRM times it out, USR2 dumps its stack)
are in ``child_signals.py``.
"""

import logging
import select
import time

from jobrunner.process import proc
from jobrunner.process.batch_guard import BatchGuard
from jobrunner.errors import Retry, ShutdownRequested
from jobrunner.job import ErrorInfo, Outcome
from jobrunner.log import job_ended, job_started, release_held_lines
from jobrunner.middleware import MiddlewareChain
from jobrunner.lifecycle import Bury, RetryLater, after_failure
from jobrunner.process.child_signals import ChildSignals, arm_alarm
from jobrunner.process import messages
from jobrunner.process.joblog import log_outcome
from jobrunner.process.outage import OutageNotice
from jobrunner.process.messages import Batch, Beat, Cut, JobEntry, Ready, Recycle
from jobrunner.process.prefetch import Prefetch
from jobrunner.process.recycle import jittered, recycle_reason
from jobrunner.process.slot import JobSlot

log = logging.getLogger("jobrunner.child")

#: Longest wait, seconds, between two tries to reach a backend that is away (full, down).
MAX_RECONNECT_DELAY = 10
#: Time limit (s) for setting aside a payload that is not a job; within pgmq's LEASE_MARGIN.
BAD_PAYLOAD_TIMEOUT = 30.0


class ChildLoop(ChildSignals):
    """Runs jobs one at a time for one pool until told to stop.

    The child owns one backend connection, made here after the fork. It talks to the
    supervisor only through ``channel``; signals from outside (a TERM sent to the whole process
    group by systemd, say) only set flags, except SIGUSR1 and SIGALRM which interrupt a job.
    """

    def __init__(self, backend, registry, settings, queues, child_id, channel, label,
                 parent_pid=None, quiet=False, slot=None):
        self.backend = backend
        self.registry = registry
        self.settings = settings
        self.queues = queues
        self.child_id = child_id
        self.channel = channel
        self.slot = slot if slot is not None else JobSlot()   # shared with the supervisor
        self.label = label
        self.parent_pid = parent_pid
        self.middleware = MiddlewareChain(getattr(registry, "middleware", ()))
        self.consumer = None
        self.instances = {}
        self.ready = False
        self.orphaned = False
        self.stopping = False
        self.quiet = quiet
        self.in_job = False
        self.alarm_armed = False  # a job's timeout alarm may still be set (``_disarm_alarm``)
        self.jobs_done = 0
        self.job_limit = jittered(settings.max_jobs)
        self.recycle_asked = False
        self.last_beat = 0.0
        self.prefetch = Prefetch()
        self.slowest = 0.0        # longest run in the current batch, seconds
        self.unstarted = []       # the jobs of the current batch after the running one
        self.guard = BatchGuard(self._put_back_behind, backend.connection_errors,
                                at_deadline=release_held_lines, running=self._title_busy)
        self.failure = None       # the ErrorInfo of the run that just failed

    # -- life cycle ------------------------------------------------------------------------

    def run(self):
        """The child's main; returns its exit code."""
        self._install_signals()
        proc.set_title(f"jobrunner {self.label}: connecting")
        self._connect()
        if self.consumer is None:
            return 0          # told to stop before the backend came back
        self.channel.send(Ready())
        self.ready = True
        try:
            while not self.stopping:
                self._loop_once()
        except ShutdownRequested:
            pass   # the abort signal came between jobs
        finally:
            self._send_batch_outputs()
            self._close()
        return 0

    def _loop_once(self):
        self._read_channel()
        if self.stopping:
            return
        self._beat_if_due()
        if self.quiet:
            proc.set_title(f"jobrunner {self.label}: quiet")
            self._flush_consumer()         # acks held for the next fetch go now
            self._wait_channel(self.settings.heartbeat_interval)
            return
        proc.set_title(f"jobrunner {self.label}: idle")
        try:
            self._send_batch_outputs()       # the last batch's "dones" message goes now
            jobs = self._fetch()
            if not jobs:
                self.consumer.flush()
            else:
                self._read_channel()     # a quiet or stop that came during the fetch wins
                self.slot.begin_batch(len(jobs))
                self._report_batch(jobs)
            self.slowest = 0.0
            fetched_at = time.monotonic()
            if len(jobs) > 1:         # a long job must not hold the rest: see batch_guard.py
                self.guard.arm(jobs, fetched_at + self.prefetch.BUDGET)
            try:
                self._run_batch(jobs, fetched_at)
            finally:
                self.guard.disarm()
                self._disarm_alarm()
            self.unstarted = []
            self.prefetch.after_batch(len(jobs), self.slowest, time.monotonic() - fetched_at)
        except self.backend.connection_errors as exc:
            self._reconnect(exc)
        self._maybe_recycle()

    def _run_batch(self, jobs, fetched_at):
        for index, job in enumerate(jobs):
            if not self.guard.starting(index):
                break                 # the guard put the rest back while a job ran long
            # Once a job as long as the slowest so far would end past the batch's budget, the
            # rest goes back unrun: it could run elsewhere, and its lease started at the fetch.
            if self.stopping or self.quiet or self.prefetch.batch_is_over(
                    self.slowest, time.monotonic() - fetched_at):
                self._put_back(jobs[index:])
                break
            self.unstarted = jobs[index + 1:]
            self._run_counted(job, index)
            if self.channel.has_input():     # a quiet or stop sent during the job
                self._read_channel()

    def _fetch(self):
        """One fetch: up to ``prefetch.limit`` jobs; a pgmq wait also wakes on the pipe."""
        return self.consumer.fetch(self.settings.fetch_timeout, wake=self.channel,
                                   limit=self.prefetch.limit)

    def _flush_consumer(self):
        try:
            self.consumer.flush()
        except self.backend.connection_errors as exc:
            self._reconnect(exc)

    def _reconnect(self, exc):
        """A new consumer after a lost connection; the acks the old one still held are written
        by the new one first, so jobs that succeeded do not run again."""
        log.warning("%s: lost the backend connection (%s); reconnecting", self.label, exc)
        acks = self.consumer.take_unsent_acks() if self.consumer is not None else None
        unstarted, self.unstarted = self.unstarted, []
        self._close()
        self._connect(acks)
        if unstarted and self.consumer is not None:
            # The batch broke off: its unstarted jobs go back now, not at the end of a lease.
            try:
                self._put_back(unstarted)
            except self.backend.connection_errors:
                pass          # lost again: leases and in-flight lists still hold them

    def _put_back(self, jobs):
        """Requeue the unstarted rest of a batch, telling the supervisor first ("cut"), before
        the jobs can be read again elsewhere."""
        self.channel.send(Cut())
        self.consumer.requeue_many(jobs)

    def _put_back_behind(self, jobs):
        """The guard's put-back (while a job of the batch runs long): those jobs are no
        longer this child's to put back again."""
        self._put_back(jobs)
        self.unstarted = []

    def _connect(self, acks=None):
        """Open the consumer, retrying with capped backoff while the backend is away."""
        delay, outage = 0.2, OutageNotice(log, self.label)
        while not self.stopping:
            try:
                self.consumer = self.backend.consumer(self.queues, self.child_id, acks=acks)
                outage.ended(self.backend.name)
                return
            except self.backend.connection_errors as exc:
                outage.failed(f"cannot connect to {self.backend.name}; retrying, at least "
                              f"every {MAX_RECONNECT_DELAY}s", str(exc).strip())
                self._wait_channel(delay)
                self._beat_if_due()
                # The backend may ask for short waits (a standby answering mid-failover).
                delay = min(delay * 2, MAX_RECONNECT_DELAY,
                            getattr(exc, "retry_in", None) or MAX_RECONNECT_DELAY)

    def _close(self):
        if self.consumer is not None:
            try:
                self.consumer.close()
            except self.backend.connection_errors:
                pass
            self.consumer = None

    # -- running one job -------------------------------------------------------------------

    def _report_batch(self, jobs):
        """Tell the supervisor what was fetched, before any of it runs (see ``slot.py``): if
        this child dies, it knows which job was running and puts the others back at once."""
        described = []
        for job in jobs:
            worker = self.registry.lookup(job.worker_name)
            timeout = BAD_PAYLOAD_TIMEOUT if job.problem else worker.timeout if worker else None
            described.append(JobEntry(id=job.id, worker=job.worker_name, queue=job.queue,
                                      timeout=timeout, token=self.consumer.token(job),
                                      bad=bool(job.problem)))
        self.channel.send(Batch(first=self.slot.started, jobs=described))

    def run_job(self, job, position=None):
        """Run one job and settle it, counted in the slot (``position``: its place in the
        batch, for the success flag); its outcome is written to the supervisor with the others
        of its batch, before the next fetch."""
        try:
            self._run_counted(job, position)
        finally:
            self._disarm_alarm()

    def _run_counted(self, job, position):
        """``run_job``, but the job's alarm may stay armed: in a batch the next job re-arms it
        and the loop disarms it once the batch is over, one ``setitimer`` per job, not two."""
        running = job_started(job)     # until its outcome, any logger's lines name the job
        try:
            self._run_job(job, position)
        finally:
            job_ended(running)

    def _run_job(self, job, position):
        worker = None if job.problem else self.registry.lookup(job.worker_name)
        if worker is not None and worker.timeout is None:
            # A run without a time limit may outlast the leases of the jobs whose acks are
            # held for the next fetch (only running jobs have theirs renewed): write them now.
            self.consumer.flush()
        self.slot.start()
        if job.problem:
            try:
                self._settle_bad_payload(job)
            finally:
                self.slot.finish()
            return
        started = time.monotonic()
        outcome = self.failure = None
        entered = []          # middleware whose ``before`` ran
        try:
            outcome = self._execute(job, worker, entered, titled=not position)
            if outcome is Outcome.DONE and position is not None:
                self.slot.succeeded(position)
        finally:
            self.slot.finish()
            duration = time.monotonic() - started
            self.channel.defer(job.id, job.worker_name, job.queue,
                               (outcome or Outcome.ERROR).value, int(duration * 1e6))
            self.jobs_done += 1
            if duration > self.slowest:
                self.slowest = duration
            if entered:
                # Also when settling failed (no outcome): a tracing span or a timer that a
                # ``before`` opened must be closed, whatever came of the run.
                self.middleware.after(entered, job, outcome or Outcome.ERROR)
        log_outcome(job, outcome, duration, self.failure)

    def _execute(self, job, worker, entered, titled):
        if worker is None:
            error = ErrorInfo(error_class="jobrunner.UnknownWorker",
                              message=f"no worker named {job.worker_name!r} is registered "
                                      f"with this supervisor")
            return self._fail(job, None, error)
        if titled:
            self._title_busy(job)
        try:
            with self.guard.user_code():   # the batch guard may act while this runs
                try:
                    if self.alarm_armed and not worker.timeout:
                        self._disarm_alarm()    # an earlier job's must not time this one out
                    self.in_job = True
                    if worker.timeout:
                        arm_alarm(worker.timeout)
                        self.alarm_armed = True
                    self.middleware.before(job, entered)
                    self._instance(worker).handle(job.args)
                finally:
                    # From here on neither the alarm nor an abort raises. The alarm stays
                    # armed (ignored) until the next job re-arms it or the batch is over.
                    self.in_job = False
        except ShutdownRequested:
            self.consumer.requeue(job)
            self.stopping = True
            return Outcome.REQUEUED
        except Retry as exc:
            error = ErrorInfo(error_class="jobrunner.Retry", message=str(exc))
            return self._fail(job, worker, error, delay=exc.in_seconds)
        except BaseException as exc:   # a job's SystemExit must not end the child either
            self.middleware.on_error(entered, job, exc)
            error = ErrorInfo.from_exception(exc, keep=worker.backtrace, skip=1)  # not _execute
            return self._fail(job, worker, error)
        # Consumers that can batch acks send this one with their next fetch (same round trip).
        self.consumer.ack_later(job)
        return Outcome.DONE

    def _fail(self, job, worker, error, delay=None):
        """Retry the job after a backoff, or bury (or discard) it when out of retries."""
        self.failure = error          # for the outcome's log line
        decision = after_failure(job, worker, self.consumer.default_backoff, delay)
        if isinstance(decision, RetryLater):
            self.consumer.retry(job, decision.delay, error)
            return Outcome.RETRY
        if worker is not None:
            self._call_exhausted_hook(worker, job, error)
        if isinstance(decision, Bury):
            self.consumer.bury(job, error)
            return Outcome.DEAD
        self.consumer.discard(job, error)
        return Outcome.DISCARDED

    def _title_busy(self, job):
        """Name ``job`` in the process title (ps, top): for the first job of each batch here,
        and from the batch guard for a later one still running at the batch's deadline. So a
        job that runs long is named, and short jobs do not each pay for a title."""
        proc.set_title(f"jobrunner {self.label}: busy {job.worker_name} {job.id}")

    def _call_exhausted_hook(self, worker, job, error):
        try:
            self._instance(worker).retries_exhausted(job, error)
        except Exception:
            log.exception("%s.retries_exhausted failed for job %s", worker.name, job.id)

    def _settle_bad_payload(self, job):
        error = ErrorInfo(error_class="jobrunner.InvalidPayload", message=job.problem)
        self.consumer.bury(job, error)
        log.error("job in %s cannot run (%s); kept as dead", job.queue, job.problem)

    def _instance(self, worker):
        instance = self.instances.get(worker)
        if instance is None:
            instance = self.instances[worker] = worker()
        return instance

    # -- the pipe and signals --------------------------------------------------------------

    def _read_channel(self):
        for message in self.channel.receive():
            messages.dispatch(self, message)
        if self.channel.closed:
            log.warning("%s: supervisor is gone; stopping", self.label)
            self.stopping = True

    def handle_stop(self, message):
        self.stopping = True

    def handle_quiet(self, message):
        self.quiet = True

    def _send_batch_outputs(self):
        """What the last batch held back to write once: its jobs' ends to the supervisor,
        and its success lines to the log."""
        self.channel.flush_deferred()
        release_held_lines()

    def _wait_channel(self, seconds):
        self._send_batch_outputs()
        select.select([self.channel], [], [], seconds)
        self._read_channel()

    def _beat_if_due(self):
        now = time.monotonic()
        if now - self.last_beat >= self.settings.heartbeat_interval:
            self.last_beat = now
            self.channel.send(Beat(jobs=self.jobs_done))

    def _maybe_recycle(self):
        if self.recycle_asked or self.stopping:
            return
        reason = recycle_reason(self.jobs_done, self.job_limit, self.settings)
        if reason:
            self.recycle_asked = True
            log.info("%s: asking to be recycled: %s", self.label, reason)
            self.channel.send(Recycle(jobs=self.jobs_done, reason=reason))


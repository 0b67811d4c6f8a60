"""The runs each backend settled per minute, counted in the supervisor for ``Inspector.history``.

Children already report every job they finish (a ``Done`` entry, with its outcome), and the supervisor
already builds the ``recover`` request of a child that died (its running job then counts as a
failed attempt). ``SettledCounts`` counts both per backend and minute: a few ints, no I/O.

Every snapshot a housekeeper gets carries, as ``SupervisorState.settled``, this supervisor's
totals so far for each of its recent minutes (``recent``), not the increments since the last
snapshot. The housekeeper writes them as this supervisor's values for those minutes, and the
backend sums the supervisors. So nothing is lost or counted twice when the housekeeper loop
keeps only the newest of two snapshots, when a housekeeper reconnects or is replaced, or while
the backend is away (for up to ``KEEP_MINUTES``): what a crash loses is only what the
supervisor counted since its housekeeper's last write.

``ClassCounts`` does the same per worker class (``SupervisorState.classes``): runs, failures,
the milliseconds of the runs that succeeded and a histogram of those, the per-class metrics a
backend may write (a few ints per class and minute, however many jobs ran).
"""

import bisect
import time

#: ``Done`` outcomes that are settled runs, and those of them that failed. "requeued" (put
#: back unchanged) and "error" (the settle itself failed: the job comes back) are not runs.
SETTLED = frozenset({"done", "retry", "dead", "discarded"})
FAILED = frozenset({"retry", "dead", "discarded"})
#: Minutes before the current one whose totals the snapshots still carry: a housekeeper that
#: could not write for that long still writes their last counts once it can.
KEEP_MINUTES = 15


def minute_of(epoch):
    """The start of the minute of ``epoch`` (seconds), as whole epoch seconds."""
    return int(epoch // 60) * 60


class SettledCounts:
    """Runs settled per backend and minute, as a supervisor learns of them."""

    def __init__(self, clock=time.time):
        self.clock = clock
        self._counts = {}       # backend name -> {minute: [processed, failed]}

    def done(self, backend, outcome, worker=None, duration=None):
        """Count the ``Done`` of one job of ``backend`` that ended with ``outcome`` (as a
        child wrote it: anything, which must not crash the supervisor); its ``worker`` and
        ``duration`` count in ``ClassCounts`` only."""
        self._count(backend, minute_of(self.clock()), outcome, worker, duration)

    def dones(self, backend, entries):
        """Count the ``Done`` entries of one ``Dones`` message, as ``done`` counts one; they
        ended within the same moment, so one clock read serves them all."""
        minute = minute_of(self.clock())
        for entry in entries:
            self._count(backend, minute, entry.outcome, entry.worker, entry.duration)

    def _count(self, backend, minute, outcome, worker, duration):
        if isinstance(outcome, str) and outcome in SETTLED:
            self._add(backend, outcome in FAILED, minute)

    def recovering(self, backend, request):
        """Count the run of a child that died with a job running (a ``Recover`` request with
        ``crashed`` and a token): its housekeeper settles that run as a failed attempt."""
        if request.crashed and request.tokens:
            self._add(backend, True)

    def _add(self, backend, failed, minute=None):
        minute = minute_of(self.clock()) if minute is None else minute
        counts = self._counts.setdefault(backend, {}).setdefault(minute, [0, 0])
        counts[0] += 1
        if failed:
            counts[1] += 1

    def recent_classes(self, backend):
        """Per-class counts: none here (``ClassCounts`` keeps them)."""
        return {}

    def _kept(self, minutes):
        """``minutes`` ({minute: counts}) without those older than ``KEEP_MINUTES``, which
        are forgotten; {} for None."""
        if not minutes:
            return {}
        oldest = minute_of(self.clock()) - KEEP_MINUTES * 60
        for minute in [m for m in minutes if m < oldest]:
            del minutes[minute]
        return minutes

    def recent(self, backend):
        """``{minute: (processed, failed)}`` of ``backend`` for the current minute and the
        ``KEEP_MINUTES`` before it, those with any run; older minutes are forgotten."""
        counts = self._kept(self._counts.get(backend))
        return {minute: (processed, failed) for minute, (processed, failed) in counts.items()}


#: Upper bounds, in milliseconds, of the duration histogram's buckets: the last one takes
#: everything slower. These are the bounds Ruby job runners' metrics use, so a backend can
#: write the buckets as they are.
DURATION_BOUNDS_MS = (20, 30, 45, 65, 100, 150, 225, 335, 500, 750, 1100, 1700, 2500, 3800,
                      5750, 8500, 13000, 20000, 30000, 45000, 65000, 100000, 150000, 225000,
                      335000, float("inf"))


def bucket_of(milliseconds):
    """The index of the histogram bucket a run of ``milliseconds`` falls in: the first whose
    bound is above it."""
    return min(bisect.bisect_right(DURATION_BOUNDS_MS, milliseconds),
               len(DURATION_BOUNDS_MS) - 1)


class ClassCounts(SettledCounts):
    """Per backend, minute and worker class: ``[processed, failed, ms, buckets]``, where
    ``ms`` and the histogram ``buckets`` count only the runs that succeeded (a failure's time
    says little about the job's speed)."""

    def __init__(self, clock=time.time):
        super().__init__(clock)
        self._classes = {}      # backend -> {minute: {worker: [p, f, ms, [bucket counts]]}}

    def _count(self, backend, minute, outcome, worker, duration):
        # Once per job in the supervisor: the counts of a worker class are made only once.
        if not isinstance(outcome, str) or outcome not in SETTLED:
            return
        self._add(backend, outcome in FAILED, minute)
        if not isinstance(worker, str):
            return
        workers = self._classes.setdefault(backend, {}).setdefault(minute, {})
        entry = workers.get(worker)
        if entry is None:
            entry = workers[worker] = [0, 0, 0, [0] * len(DURATION_BOUNDS_MS)]
        entry[0] += 1
        if outcome in FAILED:
            entry[1] += 1
        elif isinstance(duration, (int, float)) and duration >= 0:
            milliseconds = int(round(duration * 1000))
            entry[2] += milliseconds
            entry[3][bucket_of(milliseconds)] += 1

    def dones(self, backend, entries):
        # ``SettledCounts.dones`` with the minute's tables looked up once per message, not
        # once per entry: the supervisor's main cost per job.
        minute = minute_of(self.clock())
        workers = self._classes.setdefault(backend, {}).setdefault(minute, {})
        processed = failed = 0
        for entry in entries:
            outcome, worker = entry.outcome, entry.worker
            if not isinstance(outcome, str) or outcome not in SETTLED:
                continue
            processed += 1
            lost = outcome in FAILED
            failed += lost
            if not isinstance(worker, str):
                continue
            counts = workers.get(worker)
            if counts is None:
                counts = workers[worker] = [0, 0, 0, [0] * len(DURATION_BOUNDS_MS)]
            counts[0] += 1
            if lost:
                counts[1] += 1
                continue
            duration = entry.duration
            if duration is not None and duration >= 0:
                milliseconds = int(round(duration * 1000))
                counts[2] += milliseconds
                counts[3][bucket_of(milliseconds)] += 1
        if not workers:
            del self._classes[backend][minute]    # as ``_count`` leaves it: no empty minutes
        if processed:
            totals = self._counts.setdefault(backend, {}).setdefault(minute, [0, 0])
            totals[0] += processed
            totals[1] += failed

    def recent_classes(self, backend):
        """``{minute: {worker: [p, f, ms, buckets]}}`` of ``backend``, as ``recent`` keeps
        minutes: totals so far, the current minute and the ``KEEP_MINUTES`` before it."""
        minutes = self._kept(self._classes.get(backend))
        return {minute: {worker: [p, f, ms, list(buckets)]
                         for worker, (p, f, ms, buckets) in workers.items()}
                for minute, workers in minutes.items()}

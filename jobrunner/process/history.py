"""The runs each backend settled per minute, counted in the supervisor for ``Inspector.history``.

Children already report every job they finish (``Done``, with its outcome), and the supervisor
already builds the ``recover`` request of a child that died (its running job then counts as a
failed attempt). ``SettledCounts`` counts both per backend and minute: a few ints, no I/O.

Every snapshot a housekeeper gets carries, as ``SupervisorState.settled``, this supervisor's
totals so far for each of its recent minutes (``recent``), not the increments since the last
snapshot. The housekeeper writes them as this supervisor's values for those minutes, and the
backend sums the supervisors. So nothing is lost or counted twice when the housekeeper loop
keeps only the newest of two snapshots, when a housekeeper reconnects or is replaced, or while
the backend is away (for up to ``KEEP_MINUTES``): what a crash loses is only what the
supervisor counted since its housekeeper's last write.
"""

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

    def done(self, backend, outcome):
        """Count the ``Done`` of one job of ``backend`` that ended with ``outcome`` (as a
        child wrote it: anything, which must not crash the supervisor)."""
        if isinstance(outcome, str) and outcome in SETTLED:
            self._add(backend, outcome in FAILED)

    def recovering(self, backend, request):
        """Count the run of a child that died with a job running (a ``Recover`` request with
        ``crashed`` and a token): its housekeeper settles that run as a failed attempt."""
        if request.crashed and request.tokens:
            self._add(backend, True)

    def _add(self, backend, failed):
        minute = minute_of(self.clock())
        counts = self._counts.setdefault(backend, {}).setdefault(minute, [0, 0])
        counts[0] += 1
        if failed:
            counts[1] += 1

    def recent(self, backend):
        """``{minute: (processed, failed)}`` of ``backend`` for the current minute and the
        ``KEEP_MINUTES`` before it, those with any run; older minutes are forgotten."""
        counts = self._counts.get(backend)
        if not counts:
            return {}
        oldest = minute_of(self.clock()) - KEEP_MINUTES * 60
        for minute in [m for m in counts if m < oldest]:
            del counts[minute]
        return {minute: (processed, failed) for minute, (processed, failed) in counts.items()}

"""Which fetched job a worker child is running, known to its supervisor without a message per job.

The child tells its supervisor about each fetch once, on the pipe: a ``batch`` message with every
job it fetched (id, worker, queue, timeout, token) and ``first``, the number of jobs it had
started before them. Around each job it then only bumps two counters in a ``JobSlot``, memory
mapped into both processes before the fork: ``started`` before the job runs, ``finished`` after
it is settled. Outcomes (one "dones" message per batch) travel on the pipe before the next fetch.

So the supervisor knows at any moment, and after a crash exactly, which job was running (the
``started``-th) and which were fetched but never started (the rest of the batch), while a busy
child makes one pipe write per fetch instead of one per job. Each counter is one aligned 8-byte
word written by the child alone; the supervisor only reads them.
"""

import mmap


#: Where the per-job success flags start in the page, after the two counters.
_FLAGS = 16


class JobSlot:
    """The two counters, and a success flag per job of the batch, in memory shared by a worker
    child and its supervisor.

    A flag says the job succeeded: its ack may still be held by the child for its next fetch,
    so if the child dies first, recovery acks it instead of running it again.
    """

    def __init__(self):
        self._map = mmap.mmap(-1, mmap.PAGESIZE)
        self._counts = memoryview(self._map).cast("q")
        self.capacity = mmap.PAGESIZE - _FLAGS

    @property
    def started(self):
        return self._counts[0]

    @property
    def finished(self):
        return self._counts[1]

    def start(self):
        """A job is about to run (called by the child)."""
        self._counts[0] += 1

    def finish(self):
        """The job that ran is settled (called by the child)."""
        self._counts[1] += 1

    def begin_batch(self, size):
        """Clear the flags of a new batch of ``size`` jobs, before it is reported."""
        size = min(size, self.capacity)
        self._map[_FLAGS:_FLAGS + size] = bytes(size)

    def succeeded(self, position):
        """The job at ``position`` in its batch succeeded (set before ``finish``)."""
        if position < self.capacity:
            self._map[_FLAGS + position] = 1

    def has_succeeded(self, position):
        return position < self.capacity and self._map[_FLAGS + position] == 1

    def flags(self, count):
        """The success flags of the first ``count`` jobs of the batch."""
        return self._map[_FLAGS:_FLAGS + min(max(count, 0), self.capacity)]

    def close(self):
        self._counts.release()
        self._map.close()


class JobTracker:
    """The supervisor's view of one worker child: its last batch and the slot's counters."""

    def __init__(self, slot):
        self.slot = slot
        self.batch = []          # job descriptions of the last "batch" message
        self.first = 0           # jobs the child had started before that batch
        self.cut = False         # the child put the batch's unstarted rest back itself
        self.seen = 0            # ``started`` when last looked at
        self._counts = (0, 0)    # (started, finished) at the last ``progressed``

    def on_batch(self, message):
        """Take the child's next batch; returns the jobs of the previous one that started and
        were not counted yet (the new batch's ``first`` says where that one stopped)."""
        first = int(message.first or 0)
        rest = self.newly_started(upto=first)
        self.batch = list(message.jobs or ())
        self.first = first
        self.cut = False
        self.seen = max(self.seen, first)
        return rest

    def on_cut(self):
        self.cut = True

    def newly_started(self, upto=None):
        """Jobs of the batch that started since the last call, oldest first."""
        end = min(self.slot.started, self.first + len(self.batch))
        if upto is not None:
            end = min(end, upto)
        begin, self.seen = max(self.seen, self.first), max(self.seen, end)
        return self.batch[begin - self.first:end - self.first] if end > begin else []

    def progressed(self):
        """True when the child started or finished a job since the last call: a sign of
        life as good as a heartbeat on the pipe."""
        counts = (self.slot.started, self.slot.finished)
        moved, self._counts = counts != self._counts, counts
        return moved

    def running(self):
        """The description of the job running now, or None (a job that succeeded and has not
        yet counted itself finished is not running any more)."""
        started = self.slot.started
        if started <= self.slot.finished:
            return None
        index = started - self.first - 1
        if not 0 <= index < len(self.batch) or self.slot.has_succeeded(index):
            return None
        return self.batch[index]

    def succeeded(self):
        """The batch's jobs that succeeded, their acks perhaps still held by the child."""
        count = min(self.slot.started - self.first, len(self.batch))
        return [job for job, flag in zip(self.batch, self.slot.flags(count)) if flag]

    def held(self):
        """Tokens of the batch's jobs that never started (none once the child cut it)."""
        if self.cut:
            return []
        begin = max(0, self.slot.started - self.first)
        return [job.token for job in self.batch[begin:] if job.token]

    def close(self):
        self.slot.close()

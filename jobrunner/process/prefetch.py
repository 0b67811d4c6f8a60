"""How many jobs a child's next fetch may take, and when a batch's unstarted rest goes back."""


class Prefetch:
    """How many jobs the next fetch may take: many only while the queue is deep and fast.

    One fetch round trip can bring up to ``limit`` jobs, which the child then runs one after
    the other; a job held behind a slow one waits for it (the trouble with Celery's prefetch).
    So the limit starts at 1 and doubles after a full batch in which every job took less than
    ``FAST`` seconds and the whole batch less than half of ``BUDGET``. It falls back to 1 after
    any slower job or an empty fetch (idle), and halves after a batch that ran out its budget.

    The child's loop (``ChildLoop._run_batch``) puts the unstarted rest of a batch back, in
    order, as soon as a job was slow or the batch has run for ``BUDGET`` seconds, and its
    batch guard (``batch_guard.py``) does so during a job that runs past that time, so every
    job that runs starts less than ``BUDGET`` after its fetch, and a queue of slow jobs is
    fetched one at a time.
    """

    FAST = 0.005
    BUDGET = 0.025
    MAX = 256

    def __init__(self):
        self.limit = 1

    def after_batch(self, fetched, slowest, elapsed=0.0):
        """Adjust the limit after a batch of ``fetched`` jobs that took ``elapsed`` seconds,
        the longest of them ``slowest``."""
        if not fetched or slowest >= self.FAST:
            self.limit = 1
        elif elapsed >= self.BUDGET:
            self.limit = max(1, self.limit // 2)
        elif fetched >= self.limit and elapsed < self.BUDGET / 2:
            self.limit = min(self.limit * 2, self.MAX)

    def batch_is_over(self, slowest, elapsed):
        """True when the rest of a batch must go back: a job was slow or the time is up."""
        return slowest >= self.FAST or elapsed >= self.BUDGET

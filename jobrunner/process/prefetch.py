"""How many jobs a child's next fetch may take, and when a batch's unstarted rest goes back."""


class Prefetch:
    """How many jobs the next fetch may take: as many as fit the batch's time budget.

    One fetch round trip can bring up to ``limit`` jobs, which the child then runs one after
    the other; a job held behind a slow one waits for it (the trouble with Celery's prefetch).
    So every fetched job must start within ``BUDGET`` seconds of its fetch, or go back.

    The limit starts at 1. After each batch it is at most the number of jobs as long as the
    batch's slowest that fit in ``BUDGET`` (4 jobs of 5 ms, 1 of 13 ms or more); under that
    cap it doubles after a full batch that took less than half of ``BUDGET`` and halves after
    one that ran out its budget. An empty fetch (idle) sets it back to 1.

    The child's loop (``ChildLoop._run_batch``) starts the next job of a batch only while one
    as long as the slowest so far would end within ``BUDGET``, and puts the unstarted rest back,
    in order, otherwise; its batch guard (``batch_guard.py``) does so during a job that runs
    past the budget. So a fetched job starts within ``BUDGET`` of its fetch or goes back to the
    queue for another child, and a queue of slow jobs is fetched one at a time.
    """

    BUDGET = 0.025
    MAX = 256

    def __init__(self):
        self.limit = 1

    def fits(self, slowest: float) -> int:
        """How many jobs of ``slowest`` seconds fit in the budget, at least 1, at most MAX."""
        if slowest <= self.BUDGET / self.MAX:
            return self.MAX
        return max(1, int(self.BUDGET / slowest))

    def after_batch(self, fetched: int, slowest: float, elapsed: float = 0.0) -> None:
        """Adjust the limit after a batch of ``fetched`` jobs that took ``elapsed`` seconds,
        the longest of them ``slowest``."""
        if not fetched:
            self.limit = 1
            return
        if elapsed >= self.BUDGET:
            self.limit = max(1, self.limit // 2)
        elif fetched >= self.limit and elapsed < self.BUDGET / 2:
            self.limit *= 2
        self.limit = min(self.limit, self.fits(slowest))

    def batch_is_over(self, slowest: float, elapsed: float) -> bool:
        """True when the rest of a batch must go back: the budget is spent, or a next job as
        long as the slowest so far would end past it."""
        return elapsed >= self.BUDGET or elapsed + slowest > self.BUDGET

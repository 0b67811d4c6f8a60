"""How a consumer learns which queues are paused: one read per interval, never one per fetch."""

from jobrunner.backends.paused import PAUSE_CHECK_SECONDS, PausedQueues


class Reads:
    """A stand-in for the server's paused set that counts its reads."""

    def __init__(self):
        self.paused, self.count = set(), 0

    def __call__(self):
        self.count += 1
        return set(self.paused)


def test_the_paused_set_is_read_once_per_interval_and_a_change_is_seen_after_it():
    now = [100.0]
    reads = Reads()
    queues = PausedQueues(["a", "b", "c"], reads, clock=lambda: now[0])
    assert queues.serving() == ["a", "b", "c"] and reads.count == 1
    reads.paused.add("b")
    now[0] += PAUSE_CHECK_SECONDS / 2
    assert queues.serving() == ["a", "b", "c"] and reads.count == 1     # not read again yet
    assert queues.next_check_in() == PAUSE_CHECK_SECONDS / 2
    now[0] += PAUSE_CHECK_SECONDS / 2
    assert queues.next_check_in() == 0.0
    assert queues.serving() == ["a", "c"] and reads.count == 2          # within the interval
    reads.paused = {"a", "b", "c"}
    queues.expire()
    assert queues.serving() == [] and reads.count == 3

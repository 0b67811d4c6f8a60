"""Unit tests of the child's adaptive prefetch (``Prefetch`` and ``ChildLoop``), in memory.

What must hold, whatever the timing:
    * the fetch limit starts at 1, doubles only after a full batch that took under half of
      ``Prefetch.BUDGET``, is capped at ``Prefetch.MAX`` and at the number of jobs as long as
      the batch's slowest that fit the budget, and falls back to 1 after an empty fetch;
    * once a next job as long as the slowest so far would end past ``Prefetch.BUDGET``, once
      the budget is spent, or after a quiet or a stop, the unstarted rest of the batch is
      requeued, in order, and never run;
    * every fetched job is settled exactly once (ack, retry, bury, discard or requeue);
    * each fetch is reported ("batch") before its first job runs, and the supervisor's view of
      the job slot names the job running; every started job's "done" (deferred) reaches the
      supervisor's end of the pipe, in start order, by the time the child fetches again,
      waits quiet or exits.

The budget is 25 ms. Tests whose no-op jobs must batch widen it with the ``roomy`` fixture, so
a loaded machine cannot make a no-op job look long; the ``Slow`` worker always sleeps half the
budget in force, read at run time, so no second job fits behind it. The tests of invariants
use the real budget: they hold however long each job takes.
"""

import collections
import os
import random
import signal
import threading
import time

import pytest

import jobrunner
from jobrunner.backends.memory import MemoryBackend, MemoryConsumer
from jobrunner.process.batch_guard import BatchGuard
from jobrunner.process.channel import Channel
from jobrunner.process import messages
from jobrunner.process.child import ChildLoop
from jobrunner.process.prefetch import Prefetch
from jobrunner.config import Settings
from jobrunner.process.slot import JobTracker
from helpers import wait_for
from log_support import configure, stream  # noqa: F401 (fixtures)

RAN = []        # args (= job ids) of the jobs whose handle was entered, in order
HOOKS = {}      # job id -> callable run inside that job's handle


class Quick(jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer

    def handle(self, args):
        RAN.append(args)
        hook = HOOKS.get(args)
        if hook is not None:
            hook()


class Unbounded(Quick):
    """Quick, but with no time limit: its pgmq lease is renewed only while it runs."""

    timeout = None


class Slow(jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer

    def handle(self, args):
        RAN.append(args)
        time.sleep(Prefetch.BUDGET / 2)     # no second job fits behind it


class Flaky(jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer
    max_retries = 1

    def handle(self, args):
        RAN.append(args)
        raise ValueError(args)


class AsksRetry(jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer

    def handle(self, args):
        RAN.append(args)
        raise jobrunner.Retry(in_seconds=3)


ACTION_OUTCOME = {"ack": "done", "retry": "retry", "bury": "dead", "discard": "discarded",
                  "requeue": "requeued"}


class RecordingConsumer(MemoryConsumer):
    """The memory consumer, also keeping each fetch's limit and jobs."""

    def __init__(self):
        super().__init__()
        self.limits = []            # the limit of each fetch
        self.batches = []           # the jobs each fetch returned
        self.before_fetch = None    # called first thing in each fetch
        self.on_empty = None        # called when a fetch finds nothing

    def fetch(self, timeout, wake=None, limit=1):
        if self.before_fetch is not None:
            self.before_fetch()
        jobs = super().fetch(timeout, wake=wake, limit=limit)
        self.limits.append(limit)
        self.batches.append(list(jobs))
        if not jobs and self.on_empty is not None:
            self.on_empty()
        return jobs

    @property
    def fetched(self):
        return [job for batch in self.batches for job in batch]

    def actions(self):
        """job id -> the list of settlements it got."""
        seen = collections.defaultdict(list)
        for action, job, _ in self.settled:
            seen[job.id].append(action)
        return seen


class DeferringConsumer(RecordingConsumer):
    """Holds ``ack_later`` acks like pgmq and reliable Sidekiq: they are written with the next
    fetch, or by ``flush`` / ``close``."""

    def __init__(self):
        super().__init__()
        self.held = []
        self.closes = 0

    def ack_later(self, job):
        self.held.append(job)

    def _write_held(self):
        held, self.held = self.held, []
        for job in held:
            self.ack(job)

    def fetch(self, timeout, wake=None, limit=1):
        self._write_held()                  # same round trip as the fetch
        return super().fetch(timeout, wake=wake, limit=limit)

    def flush(self):
        self._write_held()

    def close(self):
        self._write_held()
        self.closes += 1

    def take_unsent_acks(self):
        held, self.held = self.held, []
        return held


class SupervisorEnd:
    """The supervisor's end of the pipe and its view of the child's job slot."""

    def __init__(self, channel, slot):
        self.channel = channel
        self.tracker = JobTracker(slot)
        self.messages = []
        self.started_jobs = []      # batch entries of the jobs the slot shows started, in order

    def send(self, kind):
        self.channel.send(messages.decode({"t": kind}))      # "stop" or "quiet"

    def read(self):
        for message in self.channel.receive():
            if message.kind == "batch":
                self.started_jobs += self.tracker.on_batch(message)
            elif message.kind == "cut":
                self.tracker.on_cut()
            self.messages.append(message)
        self.started_jobs += self.tracker.newly_started()
        return self.messages

    def running(self):
        self.read()
        job = self.tracker.running()
        return job and job.id

    def check_done(self, complete=True):
        """Assert the "dones" entries are those of the started jobs (bad payloads send none),
        once each, in the order they started; ``complete``: every started job's is written.

        Returns {job id: ``Done`` entry}.
        """
        done = [entry for m in self.read() if m.kind == "dones" for entry in m.jobs]
        ids = [m.id for m in done]
        started = self.started()
        assert len(ids) == len(set(ids)), f"a job reported twice: {ids}"
        assert ids == started[:len(ids)], f"'done' {ids} against started {started}"
        if complete:
            assert ids == started, f"no 'done' yet for {started[len(ids):]}"
        return {m.id: m for m in done}

    def started(self):
        self.read()
        return [job.id for job in self.started_jobs if not job.bad]


class Harness:
    def __init__(self, consumer, settings):
        self.registry = jobrunner.Registry()
        for worker in (Quick, Unbounded, Slow, Flaky, AsksRetry):
            self.registry.register(worker)
        self.consumer = consumer
        ours, theirs = Channel.pair()
        self.ends = (ours, theirs)
        self.loop = ChildLoop(MemoryBackend(settings, self.registry, consumer), self.registry,
                              settings, ["default"], "test:1", theirs, "test")
        self.supervisor = SupervisorEnd(ours, self.loop.slot)
        self.loop.consumer = consumer
        self.loop._install_signals()

    def add(self, job_id, worker="Quick", **fields):
        return self.consumer.add(id=job_id, worker_name=worker, args=job_id, **fields)

    def add_quick(self, *ids):
        return [self.add(job_id) for job_id in ids]

    def run_until_drained(self):
        """``ChildLoop.run`` until a fetch finds nothing, then the supervisor says stop.

        Every fetch first checks that the "dones" entries of all jobs run so far were written.
        """
        self.consumer.before_fetch = lambda: self.supervisor.check_done(complete=True)
        self.consumer.on_empty = lambda: self.supervisor.send("stop")
        started = time.monotonic()
        assert self.loop.run() == 0
        assert time.monotonic() - started < 5

    def close(self):
        for end in self.ends:
            end.close()


@pytest.fixture
def make():
    RAN.clear()
    HOOKS.clear()
    made = []

    def make_harness(consumer_class=RecordingConsumer, **settings):
        settings.setdefault("heartbeat_interval", 0.02)     # a quiet wait is this long
        settings.setdefault("fetch_timeout", 0)
        made.append(Harness(consumer_class(), Settings(**settings)))
        return made[-1]

    yield make_harness
    for sig in (signal.SIGINT, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGTERM,
                signal.SIGUSR1, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for harness in made:
        harness.close()
    RAN.clear()
    HOOKS.clear()


@pytest.fixture
def h(make):
    return make()


@pytest.fixture
def roomy(monkeypatch):
    """A 200 ms batch budget, so no-op jobs batch (8 of them fit unless one takes 25 ms) and
    a batch never runs out of time on a loaded machine (the logic is unchanged)."""
    monkeypatch.setattr(Prefetch, "BUDGET", 0.2)


def ids(jobs):
    return [job.id for job in jobs]


def settled(consumer):
    return [(action, job.id) for action, job, _ in consumer.settled]


# -- Prefetch on its own (the real constants) -------------------------------------------------

def test_the_constants_keep_a_held_job_waiting_briefly():
    assert 0 < Prefetch.BUDGET <= 0.2           # the roomy fixture stays above it
    assert Prefetch.MAX > 1
    assert Prefetch().limit == 1


def test_limit_doubles_after_each_full_fast_batch_up_to_the_cap():
    prefetch = Prefetch()
    seen = [prefetch.limit]
    for _ in range(Prefetch.MAX.bit_length() + 1):
        prefetch.after_batch(prefetch.limit, 0.0)
        seen.append(prefetch.limit)
    expected = [1]
    while len(expected) < len(seen):
        expected.append(min(expected[-1] * 2, Prefetch.MAX))
    assert seen == expected
    assert seen[-1] == seen[-2] == Prefetch.MAX


def test_as_many_jobs_fit_as_the_slowest_allows_within_the_budget():
    prefetch, budget = Prefetch(), Prefetch.BUDGET
    assert prefetch.fits(0.0) == prefetch.fits(budget / Prefetch.MAX) == Prefetch.MAX
    assert prefetch.fits(budget / 4 * 0.99) == 4        # 4 jobs of 5 ms (and a bit)
    assert prefetch.fits(budget / 4 * 1.01) == 3
    assert prefetch.fits(budget / 2 * 1.01) == prefetch.fits(budget * 10) == 1


def test_the_limit_is_capped_by_what_fits_the_budget():
    prefetch = Prefetch()
    prefetch.limit = 64
    prefetch.after_batch(64, Prefetch.BUDGET / 4 * 1.01, elapsed=Prefetch.BUDGET / 4)
    assert prefetch.limit == 3
    prefetch.after_batch(3, Prefetch.BUDGET / 40, elapsed=Prefetch.BUDGET / 20)
    assert prefetch.limit == 6                  # doubled, and under what fits (40)


def test_a_batch_near_its_budget_stops_the_growth_and_one_over_it_halves_the_limit():
    prefetch = Prefetch()
    prefetch.limit = 64
    prefetch.after_batch(64, 0.0, elapsed=Prefetch.BUDGET / 2)
    assert prefetch.limit == 64
    prefetch.after_batch(64, 0.0, elapsed=Prefetch.BUDGET)
    assert prefetch.limit == 32
    prefetch.after_batch(32, 0.0, elapsed=Prefetch.BUDGET / 4)
    assert prefetch.limit == 64


def test_the_batch_is_over_once_a_job_like_the_slowest_would_end_past_the_budget():
    prefetch, budget = Prefetch(), Prefetch.BUDGET
    assert not prefetch.batch_is_over(0.0, budget * 0.99)
    assert prefetch.batch_is_over(0.0, budget)                  # the time is up
    assert not prefetch.batch_is_over(budget * 0.4, budget * 0.59)
    assert prefetch.batch_is_over(budget * 0.4, budget * 0.61)
    assert prefetch.batch_is_over(budget * 0.51, budget * 0.51)  # after a job over half of it


def test_a_partial_batch_keeps_the_limit():
    prefetch = Prefetch()
    prefetch.limit = 8
    prefetch.after_batch(7, 0.0)
    assert prefetch.limit == 8
    prefetch.after_batch(1, 0.0)
    assert prefetch.limit == 8


@pytest.mark.parametrize("limit", [1, 2, 8, Prefetch.MAX])
@pytest.mark.parametrize("fetched, slowest", [(0, 0.0), ("all", 1.0), ("all", "half"),
                                              (1, 1.0)])
def test_a_job_over_half_the_budget_or_an_empty_fetch_drops_the_limit_to_one(limit, fetched,
                                                                               slowest):
    prefetch = Prefetch()
    prefetch.limit = limit
    fetched = limit if fetched == "all" else fetched
    slowest = Prefetch.BUDGET / 2 * 1.01 if slowest == "half" else slowest
    prefetch.after_batch(fetched, slowest)
    assert prefetch.limit == 1


# -- the fetch limit in the loop ---------------------------------------------------------------

def test_the_limit_grows_over_full_fast_batches_and_is_capped(h, monkeypatch):
    monkeypatch.setattr(Prefetch, "BUDGET", 10.0)      # 256 no-op jobs always fit
    limits = [1]
    while limits[-1] < Prefetch.MAX:
        limits.append(min(limits[-1] * 2, Prefetch.MAX))
    limits += [Prefetch.MAX] * 3                # full batches at the cap: no growth past it
    sizes = limits + [Prefetch.MAX - 1]         # then a partial batch, then nothing
    jobs = h.add_quick(*(f"q{i}" for i in range(sum(sizes))))
    h.run_until_drained()
    assert h.consumer.limits == limits + [Prefetch.MAX, Prefetch.MAX]
    assert [len(batch) for batch in h.consumer.batches] == sizes + [0]
    assert RAN == ids(jobs)
    assert settled(h.consumer) == [("ack", job.id) for job in jobs]
    assert h.loop.prefetch.limit == 1           # the empty fetch at the end


def test_a_partial_batch_does_not_grow_the_limit_and_an_empty_fetch_resets_it(h, roomy):
    h.add_quick("a")
    h.loop._loop_once()                         # limit 1, full -> 2
    h.add_quick("b")
    h.loop._loop_once()                         # limit 2, got 1 -> stays 2
    assert h.loop.prefetch.limit == 2
    h.add_quick("c", "d")
    h.loop._loop_once()                         # limit 2, full -> 4
    assert h.loop.prefetch.limit == 4
    h.loop._loop_once()                         # nothing -> 1
    h.add_quick("e", "f")
    h.loop._loop_once()                         # limit 1 -> e only
    assert h.consumer.limits == [1, 2, 2, 4, 1]
    assert [ids(b) for b in h.consumer.batches] == [["a"], ["b"], ["c", "d"], [], ["e"]]
    assert RAN == ["a", "b", "c", "d", "e"]
    assert h.loop.prefetch.limit == 2


def test_failed_but_fast_jobs_count_as_fast(h, roomy):
    h.add("f1", "Flaky")
    h.add("r1", "AsksRetry")
    h.add("f2", "Flaky", attempt=2)
    h.add("q1")
    h.run_until_drained()
    assert h.consumer.limits == [1, 2, 4, 4]
    assert settled(h.consumer) == [("retry", "f1"), ("retry", "r1"), ("bury", "f2"),
                                   ("ack", "q1")]


# -- a slow job ----------------------------------------------------------------------------------

def test_after_a_slow_job_the_rest_of_the_batch_is_requeued_unrun_in_order(h, roomy):
    h.add_quick("a", "b", "c")                  # batches of 1 and 2: the limit reaches 4
    h.add_quick("d")
    h.add("slow", "Slow")
    h.add_quick("e", "f", "g")
    h.loop._loop_once()
    h.loop._loop_once()
    assert h.loop.prefetch.limit == 4
    h.loop._loop_once()                         # d, slow | e, f go back
    assert ids(h.consumer.batches[-1]) == ["d", "slow", "e", "f"]
    assert settled(h.consumer)[-4:] == [("ack", "d"), ("ack", "slow"), ("requeue", "e"),
                                        ("requeue", "f")]
    assert h.loop.prefetch.limit == 1
    assert RAN == ["a", "b", "c", "d", "slow"]
    h.run_until_drained()                       # g alone, then nothing
    assert h.consumer.limits == [1, 2, 4, 1, 2]
    assert RAN == ["a", "b", "c", "d", "slow", "g"]
    assert "e" not in h.supervisor.started() and "f" not in h.supervisor.started()
    assert [a for a, _ in settled(h.consumer)].count("requeue") == 2


def test_a_batch_that_spends_its_budget_puts_the_rest_back_and_halves_the_limit(h, roomy,
                                                                                 monkeypatch):
    monkeypatch.setattr(Prefetch, "BUDGET", 0.02)
    h.loop.prefetch.limit = 8
    h.add_quick("a")
    HOOKS["b"] = lambda: time.sleep(0.03)      # alone, it outlasts the budget
    h.add_quick("b", "c", "d")
    h.loop._loop_once()
    assert ids(h.consumer.batches[-1]) == ["a", "b", "c", "d"]
    assert RAN == ["a", "b"]
    # c and d went back while b was still running, once the budget was spent.
    assert settled(h.consumer) == [("ack", "a"), ("requeue", "c"), ("requeue", "d"),
                                   ("ack", "b")]
    assert h.loop.prefetch.limit == 1           # halved, then capped: one such job fits
    assert h.supervisor.started() == ["a", "b"]


def test_the_jobs_behind_a_long_job_go_back_while_it_runs(h, roomy, monkeypatch):
    monkeypatch.setattr(Prefetch, "BUDGET", 0.3)    # "a" is a no-op: well within it
    h.loop.prefetch.limit = 8
    h.add_quick("a", "long", "b", "c")
    seen_while_running = []

    def long_job():
        # Runs until the guard has put b and c back: the promise is kept during the job.
        wait_for(lambda: ("requeue", "c") in settled(h.consumer), timeout=5,
                 message="b and c put back while the long job runs")
        seen_while_running.extend(settled(h.consumer))
        seen_while_running.extend(m.kind for m in h.supervisor.read() if m.kind == "cut")

    HOOKS["long"] = long_job
    h.loop._loop_once()
    assert RAN == ["a", "long"]
    assert seen_while_running == [("ack", "a"), ("requeue", "b"), ("requeue", "c"), "cut"]
    assert settled(h.consumer)[-1] == ("ack", "long")
    assert h.supervisor.started() == ["a", "long"]
    assert h.supervisor.tracker.held() == []
    assert not h.loop.unstarted


def test_the_lines_a_batch_held_are_written_at_its_deadline_while_a_job_runs_long(
        h, roomy, monkeypatch, configure, stream):
    configure("INFO")
    monkeypatch.setattr(Prefetch, "BUDGET", 0.05)
    h.loop.prefetch.limit = 4
    seen_while_running = []

    def long_job():
        wait_for(lambda: " id=a " in stream.getvalue(), timeout=5,
                 message="a's line written while the long job runs")
        seen_while_running.append(stream.getvalue())

    HOOKS["long"] = long_job
    h.add_quick("a", "long", "b")
    h.loop._loop_once()
    assert RAN == ["a", "long"]
    (written,) = seen_while_running
    assert "job done worker=Quick id=a " in written and " id=long " not in written
    h.loop._send_batch_outputs()
    assert "job done worker=Quick id=long " in stream.getvalue()


def test_the_title_names_a_batchs_first_job_and_one_still_running_at_the_deadline(
        h, roomy, monkeypatch):
    from jobrunner.process import child
    titles = []
    monkeypatch.setattr(child.proc, "set_title", titles.append)
    monkeypatch.setattr(Prefetch, "BUDGET", 0.05)
    h.loop.prefetch.limit = 4
    HOOKS["long"] = lambda: wait_for(lambda: titles[-1].endswith(" long"), timeout=5,
                                     message="the long job named in the title while it runs")
    h.add_quick("a", "b", "long", "c")
    h.loop._loop_once()
    assert RAN == ["a", "b", "long"]
    assert titles == ["jobrunner test: idle", "jobrunner test: busy Quick a",
                      "jobrunner test: busy Quick long"]     # b was too short to be named


def test_the_guard_waits_for_a_job_that_was_starting_at_the_deadline(monkeypatch):
    """The deadline passes while the main thread holds the lock, just before a job's code:
    the guard still puts the rest back and names that job once its code runs."""
    tried = threading.Event()

    class Watched:
        def __init__(self):
            self.lock = threading.Lock()

        def acquire(self, blocking=True, timeout=-1):
            got = self.lock.acquire(blocking, timeout)
            if not got:
                tried.set()
            return got

        def release(self):
            self.lock.release()

    put_back, named = [], []
    guard = BatchGuard(put_back.extend, running=named.append)
    guard.lock.release()
    guard.lock = Watched()
    guard.lock.acquire()
    guard._unlocked = type(guard.user_code())(guard.lock)
    guard.arm(["x", "y", "z"], time.monotonic())       # due at once; the main thread holds it
    assert tried.wait(5)                               # the guard came and found it taken
    assert guard.starting(0)
    with guard.user_code():
        wait_for(lambda: put_back, timeout=5, message="the rest put back during x")
    assert (put_back, named, guard.took_back) == (["y", "z"], ["x"], True)
    assert not guard.starting(1)
    guard.disarm()


def test_a_batch_of_one_after_the_guard_took_a_rest_back_still_runs(h, roomy, monkeypatch):
    # The guard's "took back" belongs to the batch it guarded: a later batch of one job (which
    # arms no guard) must run, not be skipped and left leased.
    monkeypatch.setattr(Prefetch, "BUDGET", 0.02)
    h.loop.prefetch.limit = 2
    HOOKS["long"] = lambda: wait_for(lambda: ("requeue", "b") in settled(h.consumer),
                                     timeout=5, message="b put back while the long job runs")
    h.add_quick("long", "b")
    h.loop._loop_once()
    assert RAN == ["long"]
    h.add_quick("c")
    h.loop._loop_once()                         # c, alone
    assert ids(h.consumer.batches[-1]) == ["c"]
    assert RAN == ["long", "c"]
    assert settled(h.consumer)[-1] == ("ack", "c")
    assert h.supervisor.tracker.held() == []


def test_each_fetch_is_reported_before_its_jobs_run_and_a_cut_says_so(h, roomy):
    h.loop.prefetch.limit = 4
    h.add_quick("a")
    h.add("slow", "Slow")
    h.add_quick("b", "c")
    seen_before_a = []
    HOOKS["a"] = lambda: seen_before_a.extend(m.kind for m in h.supervisor.read()
                                              if m.kind != "beat")
    h.loop._loop_once()                         # a, slow | b, c go back
    assert seen_before_a == ["batch"]
    batches = [m for m in h.supervisor.read() if m.kind in ("batch", "cut")]
    assert [(m.kind, [j.id for j in getattr(m, "jobs", ())]) for m in batches] == [
        ("batch", ["a", "slow", "b", "c"]), ("cut", [])]
    assert batches[0].first == 0 and h.loop.slot.started == 2
    assert h.supervisor.tracker.held() == []
    h.loop.prefetch.limit = 1
    h.add_quick("d")
    h.loop._loop_once()                         # a batch of one
    assert [m.first for m in h.supervisor.read() if m.kind == "batch"] == [0, 2]


def test_with_the_real_budget_a_slow_job_cuts_its_batch_and_resets_the_limit(h):
    h.loop.prefetch.limit = 4
    h.add("s1", "Slow")
    h.add_quick("a", "b", "c")
    h.loop._loop_once()
    assert settled(h.consumer) == [("ack", "s1"), ("requeue", "a"), ("requeue", "b"),
                                   ("requeue", "c")]
    assert RAN == ["s1"]
    assert h.loop.prefetch.limit == 1
    h.add("s2", "Slow")
    h.loop._loop_once()                         # a full batch of one slow job: no growth
    assert h.loop.prefetch.limit == 1
    assert h.consumer.limits == [4, 1]
    h.loop.channel.flush_deferred()             # as the next fetch does
    done = h.supervisor.check_done(complete=True)
    assert min(done["s1"].duration, done["s2"].duration) >= Prefetch.BUDGET / 2


def test_a_slow_job_last_in_a_full_batch_requeues_nothing_but_resets_the_limit(h, roomy):
    h.loop.prefetch.limit = 4
    h.add_quick("a", "b", "c")
    h.add("slow", "Slow")
    h.loop._loop_once()
    assert settled(h.consumer) == [("ack", "a"), ("ack", "b"), ("ack", "c"), ("ack", "slow")]
    assert h.loop.prefetch.limit == 1


def test_a_job_that_times_out_counts_as_long_as_it_ran(h, roomy, monkeypatch):
    monkeypatch.setattr(Quick, "timeout", 0.12)     # the 1 s sleep is cut by JobTimeout
    monkeypatch.setattr(Quick, "max_retries", 0)
    HOOKS["slow"] = lambda: time.sleep(1.0)
    h.loop.prefetch.limit = 2
    h.add_quick("slow", "a")
    h.loop._loop_once()
    assert [(action, job.id, getattr(detail, "error_class", None))
            for action, job, detail in h.consumer.settled] == [
        ("bury", "slow", "JobTimeout"), ("requeue", "a", None)]
    assert h.loop.prefetch.limit == 1


def test_one_alarm_per_timed_job_and_none_left_for_a_later_job_without_a_limit(
        h, roomy, monkeypatch):
    """A timed job's alarm stays armed after it (the next job re-arms it), but a job with no
    limit that outlasts it is not cut, and no alarm outlives the batch."""
    from jobrunner.process import child, child_signals
    armed = []
    real = child.arm_alarm
    for module in (child, child_signals):
        monkeypatch.setattr(module, "arm_alarm", lambda seconds: (armed.append(seconds),
                                                                  real(seconds)))
    monkeypatch.setattr(Quick, "timeout", 0.03)
    h.loop.prefetch.limit = 4
    h.add_quick("a", "b")
    h.add("long", "Unbounded")
    HOOKS["long"] = lambda: time.sleep(0.06)      # the work of the job: past a and b's limit
    h.loop._loop_once()
    assert settled(h.consumer) == [("ack", "a"), ("ack", "b"), ("ack", "long")]
    assert armed == [0.03, 0.03, None]            # b re-arms a's; long's disarms it
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    h.add_quick("c")
    h.loop._loop_once()
    assert armed[3:] == [0.03, None]              # the batch's end disarms it
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


# -- quiet, stop and signals in the middle of a batch --------------------------------------------

@pytest.mark.parametrize("kind", ["quiet", "stop"])
def test_a_quiet_or_stop_during_a_job_requeues_the_rest_of_its_batch(h, roomy, kind):
    h.loop.prefetch.limit = 4
    h.add_quick("a", "b", "c", "d", "e")
    HOOKS["b"] = lambda: h.supervisor.send(kind)
    h.loop._loop_once()
    assert settled(h.consumer) == [("ack", "a"), ("ack", "b"), ("requeue", "c"),
                                   ("requeue", "d")]
    assert getattr(h.loop, "quiet" if kind == "quiet" else "stopping")
    h.loop.last_beat = time.monotonic()         # no heartbeat to carry a "done" along
    h.loop._loop_once()                         # quiet: waits; stop: leaves; no fetch either way
    h.loop._loop_once()
    assert len(h.consumer.limits) == 1
    assert RAN == ["a", "b"]
    assert h.supervisor.started() == ["a", "b"]
    if kind == "quiet":                         # a quiet child's deferred "done" went out
        h.supervisor.check_done(complete=True)


@pytest.mark.parametrize("kind", ["quiet", "stop"])
def test_a_quiet_or_stop_during_the_fetch_requeues_the_whole_batch(h, kind):
    h.loop.prefetch.limit = 3
    h.add_quick("a", "b", "c")
    real_fetch = h.consumer.fetch

    def fetch_then_message(timeout, wake=None, limit=1):
        jobs = real_fetch(timeout, wake=wake, limit=limit)
        h.supervisor.send(kind)
        return jobs

    h.consumer.fetch = fetch_then_message
    h.loop._loop_once()
    assert settled(h.consumer) == [("requeue", "a"), ("requeue", "b"), ("requeue", "c")]
    assert RAN == [] and h.supervisor.started() == []


@pytest.mark.parametrize("sig, second", [(signal.SIGTERM, "ack"), (signal.SIGUSR1, "requeue")])
def test_a_term_or_abort_signal_during_a_job_requeues_the_rest(h, roomy, sig, second):
    """TERM lets the running job finish; the abort (USR1) requeues it too."""
    h.loop.prefetch.limit = 4
    h.add_quick("a", "b", "c", "d")
    HOOKS["b"] = lambda: os.kill(os.getpid(), sig)
    h.loop._loop_once()
    assert h.loop.stopping
    assert settled(h.consumer) == [("ack", "a"), (second, "b"), ("requeue", "c"),
                                   ("requeue", "d")]
    assert RAN == ["a", "b"]
    h.loop.channel.flush_deferred()             # what run() does on its way out
    done = h.supervisor.check_done(complete=True)
    assert done["b"].outcome == ACTION_OUTCOME[second]


def test_an_abort_during_a_batch_under_run_settles_everything_once(h, roomy):
    h.loop.prefetch.limit = 8
    h.add_quick(*"abcdef")
    HOOKS["c"] = lambda: os.kill(os.getpid(), signal.SIGUSR1)
    assert h.loop.run() == 0
    assert settled(h.consumer) == [("ack", "a"), ("ack", "b"), ("requeue", "c"),
                                   ("requeue", "d"), ("requeue", "e"), ("requeue", "f")]
    done = h.supervisor.check_done(complete=True)
    assert [done[i].outcome for i in "abc"] == ["done", "done", "requeued"]


# -- exactly once, and the "done" messages -----------------------------------------------------

def test_every_fetched_job_is_settled_exactly_once_across_outcomes(h, roomy):
    h.add_quick("q1", "q2", "q3")                             # limit 1, 2 -> 4
    h.add("f1", "Flaky")                                      # retry
    h.add("r1", "AsksRetry")                                  # retry
    h.add("u1", "Gone")                                       # unknown worker: bury
    h.add("bad", problem="invalid JSON")                      # bad payload: bury, -> 8
    h.add_quick("q4")
    h.add("f2", "Flaky", attempt=2, keep_dead=False)          # out of retries: discard
    h.add("f3", "Flaky", attempt=2)                           # out of retries: bury
    h.add("slow", "Slow")
    h.add_quick("q5", "q6", "q7", "q8")                       # requeued after slow
    h.add_quick("q9", "q10")                                  # limit 1, then 2 (partial)
    h.run_until_drained()
    assert [len(b) for b in h.consumer.batches] == [1, 2, 4, 8, 1, 1, 0]
    assert h.consumer.limits == [1, 2, 4, 8, 1, 2, 2]
    assert settled(h.consumer) == [
        ("ack", "q1"), ("ack", "q2"), ("ack", "q3"),
        ("retry", "f1"), ("retry", "r1"), ("bury", "u1"), ("bury", "bad"),
        ("ack", "q4"), ("discard", "f2"), ("bury", "f3"), ("ack", "slow"),
        ("requeue", "q5"), ("requeue", "q6"), ("requeue", "q7"), ("requeue", "q8"),
        ("ack", "q9"), ("ack", "q10")]
    assert {job_id: len(a) for job_id, a in h.consumer.actions().items()} == \
        {job.id: 1 for job in h.consumer.fetched}
    done = h.supervisor.check_done(complete=True)
    assert "bad" not in done                    # a payload that cannot run sends nothing
    for action, job_id in settled(h.consumer):
        if action == "requeue":
            assert job_id not in done and job_id not in RAN
        elif job_id != "bad":
            assert done[job_id].outcome == ACTION_OUTCOME[action]


def test_deferred_done_messages_are_written_before_the_child_goes_quiet(h, roomy):
    h.loop.prefetch.limit = 4
    h.add_quick("a", "b")
    h.add("slow", "Slow")
    h.loop._loop_once()                         # the three "done" wait for the next fetch
    assert h.supervisor.check_done(complete=False) == {}
    h.supervisor.send("quiet")
    h.loop.last_beat = time.monotonic()         # no heartbeat to carry them along
    h.loop._loop_once()
    assert len(h.consumer.limits) == 1
    done = h.supervisor.check_done(complete=True)
    assert list(done) == ["a", "b", "slow"]


def test_deferred_done_messages_are_written_before_the_child_exits(h, roomy):
    h.loop.prefetch.limit = 4
    h.add_quick("a", "b", "c", "d")
    HOOKS["b"] = lambda: h.supervisor.send("stop")
    assert h.loop.run() == 0
    done = h.supervisor.check_done(complete=True)
    assert list(done) == ["a", "b"]
    assert settled(h.consumer) == [("ack", "a"), ("ack", "b"), ("requeue", "c"),
                                   ("requeue", "d")]


def test_the_supervisor_sees_each_job_running_and_its_done_before_the_next_fetch(h, roomy):
    h.loop.prefetch.limit = 4
    h.add_quick("a", "b", "c", "d")
    seen_running = {}
    for job_id in "abcd":
        HOOKS[job_id] = lambda job_id=job_id: seen_running.setdefault(
            job_id, h.supervisor.running())
    h.loop._loop_once()
    assert seen_running == {"a": "a", "b": "b", "c": "c", "d": "d"}
    assert h.supervisor.running() is None
    h.loop._loop_once()                         # the next fetch writes the outcomes first
    assert list(h.supervisor.check_done(complete=True)) == ["a", "b", "c", "d"]


# -- held acks (a consumer with ack_later) -------------------------------------------------------

def test_held_acks_are_written_with_the_next_fetch_and_settle_each_job_once(make, roomy):
    h = make(DeferringConsumer)
    h.add_quick(*(f"q{i}" for i in range(14)))     # batches of 1, 2, 4, then 7 and slow
    h.add("slow", "Slow")
    h.add_quick("x", "y", "z")
    h.run_until_drained()
    assert h.consumer.held == []
    assert h.consumer.closes == 1
    actions = h.consumer.actions()
    assert {job_id: len(a) for job_id, a in actions.items()} == \
        {job.id: 1 for job in h.consumer.fetched}
    assert [len(b) for b in h.consumer.batches] == [1, 2, 4, 8, 1, 2, 0]
    assert all(a == ["ack"] for a in actions.values())     # slow was last in its batch


def test_held_acks_are_written_when_the_child_goes_quiet(make, roomy):
    h = make(DeferringConsumer)
    h.loop.prefetch.limit = 4
    h.add_quick("a", "b", "c", "d")
    HOOKS["b"] = lambda: h.supervisor.send("quiet")
    h.loop._loop_once()
    assert settled(h.consumer) == [("requeue", "c"), ("requeue", "d")]   # a, b held
    assert ids(h.consumer.held) == ["a", "b"]
    h.loop._loop_once()                         # quiet: no fetch, but the acks go out
    assert len(h.consumer.limits) == 1
    assert h.consumer.held == []
    assert sorted(settled(h.consumer)) == [("ack", "a"), ("ack", "b"), ("requeue", "c"),
                                           ("requeue", "d")]


def test_held_acks_are_written_when_the_child_stops(make, roomy):
    h = make(DeferringConsumer)
    h.loop.prefetch.limit = 4
    h.add_quick("a", "b", "c", "d")
    HOOKS["c"] = lambda: h.supervisor.send("stop")
    assert h.loop.run() == 0
    assert h.consumer.held == [] and h.consumer.closes == 1
    assert sorted(settled(h.consumer)) == [("ack", "a"), ("ack", "b"), ("ack", "c"),
                                           ("requeue", "d")]
    assert list(h.supervisor.check_done(complete=True)) == ["a", "b", "c"]


def test_after_a_lost_connection_the_held_acks_and_unstarted_jobs_carry_over(make, roomy):
    h = make(DeferringConsumer)

    class Reconnecting(MemoryBackend):
        connection_errors = (ConnectionError,)
        handed = []

        def consumer(self, queues, child_id, acks=None):
            self.handed.append([job.id for job in acks or ()])
            self.shared_consumer.held = list(acks or ())   # a new consumer adopts them
            return self.shared_consumer

    h.loop.backend = Reconnecting(h.loop.settings, h.registry, h.consumer)
    h.loop.prefetch.limit = 4
    h.add_quick("a", "b", "c", "d")

    def connection_lost():
        raise ConnectionError("server gone")
    HOOKS["c"] = lambda: setattr(h.consumer, "ack_later", lambda job: connection_lost())
    h.loop._loop_once()
    assert Reconnecting.handed == [["a", "b"]]
    assert RAN == ["a", "b", "c"]
    assert [m.kind for m in h.supervisor.read() if m.kind in ("batch", "cut")] == ["batch",
                                                                                   "cut"]
    assert ("requeue", "d") in settled(h.consumer)
    del h.consumer.ack_later
    h.consumer.flush()
    assert [job_id for action, job_id in settled(h.consumer) if action == "ack"] == ["a", "b"]


def test_held_acks_are_written_before_a_job_without_a_time_limit_starts(make, roomy):
    h = make(DeferringConsumer)
    h.loop.prefetch.limit = 4
    h.add_quick("a", "b")
    h.add("u", "Unbounded")
    acked_when_u_ran = []
    HOOKS["u"] = lambda: acked_when_u_ran.extend(settled(h.consumer))
    h.loop._loop_once()
    assert acked_when_u_ran == [("ack", "a"), ("ack", "b")]
    assert h.consumer.held == [h.consumer.fetched[2]]       # u's own ack waits as usual


# -- a model check on random queues, with the real budget ---------------------------------------

def expected_over(slowest, elapsed):
    return elapsed >= Prefetch.BUDGET or elapsed + slowest > Prefetch.BUDGET


def expected_next_limit(limit, fetched, slowest, elapsed):
    budget = Prefetch.BUDGET
    if not fetched:
        return 1
    if elapsed >= budget:
        limit = max(1, limit // 2)
    elif fetched >= limit and elapsed < budget / 2:
        limit *= 2
    fits = Prefetch.MAX if slowest <= budget / Prefetch.MAX else max(1, int(budget / slowest))
    return min(limit, fits)


class Decisions:
    """What the loop asked ``Prefetch`` and its guard, per batch (by fetch number)."""

    def __init__(self, loop, consumer, monkeypatch):
        self.checks = collections.defaultdict(list)   # (slowest, elapsed, over) per check
        self.after = {}                               # (fetched, slowest, elapsed)
        self.cut_at = {}                              # where the guard took the rest back
        prefetch, guard = loop.prefetch, loop.guard
        real_over, real_after = prefetch.batch_is_over, prefetch.after_batch
        real_starting = guard.starting

        def batch():
            return len(consumer.batches) - 1

        def batch_is_over(slowest, elapsed):
            over = real_over(slowest, elapsed)
            self.checks[batch()].append((slowest, elapsed, over))
            return over

        def after_batch(fetched, slowest, elapsed=0.0):
            self.after[batch()] = (fetched, slowest, elapsed)
            real_after(fetched, slowest, elapsed)

        def starting(index):
            going = real_starting(index)
            if not going:
                self.cut_at[batch()] = index
            return going

        monkeypatch.setattr(prefetch, "batch_is_over", batch_is_over)
        monkeypatch.setattr(prefetch, "after_batch", after_batch)
        monkeypatch.setattr(guard, "starting", starting)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("consumer_class", [RecordingConsumer, DeferringConsumer])
def test_random_queues_keep_every_invariant(make, seed, consumer_class, monkeypatch):
    """Whatever each job's timing: settled once, requeued only when the budget says so or
    after a stop (the rest of the batch, in order, never run), limits as the budget says,
    and "done" messages complete before each fetch and at exit."""
    h = make(consumer_class)
    decisions = Decisions(h.loop, h.consumer, monkeypatch)
    rng = random.Random(seed)
    count = rng.randint(30, 70)
    stop_at = rng.randrange(count) if seed % 2 else None
    kinds = {}
    for index in range(count):
        job_id = f"j{index}"
        kind = rng.choices(["quick", "slow", "flaky", "retry", "gone", "bad"],
                           [75, 4, 8, 5, 4, 4])[0]
        if index == stop_at:
            kind = "quick"
            HOOKS[job_id] = lambda: h.supervisor.send("stop")
        kinds[job_id] = kind
        if kind == "quick":
            h.add(job_id)
        elif kind == "slow":
            h.add(job_id, "Slow")
        elif kind == "flaky":
            h.add(job_id, "Flaky", attempt=rng.choice([1, 2]))
        elif kind == "retry":
            h.add(job_id, "AsksRetry")
        elif kind == "gone":
            h.add(job_id, "Gone")
        else:
            h.add(job_id, problem="truncated payload")
    h.run_until_drained()
    consumer = h.consumer
    done = h.supervisor.check_done(complete=True)
    fetched = consumer.fetched
    if consumer_class is DeferringConsumer:
        assert consumer.held == [] and consumer.closes == 1

    # exactly once: every fetched job, nothing else; never fetched means never touched
    actions = consumer.actions()
    assert {job_id: len(a) for job_id, a in actions.items()} == \
        {job.id: 1 for job in fetched}
    assert len(fetched) == len({job.id for job in fetched})
    if consumer_class is RecordingConsumer:      # settled in fetch order when acks are not held
        assert [job_id for _, job_id in settled(consumer)] == ids(fetched)
    if stop_at is None:
        assert len(fetched) == count and consumer.batches[-1] == []
    unfetched = set(kinds) - {job.id for job in fetched}
    assert not unfetched & set(RAN) and not unfetched & set(done)

    # each batch: run while the budget allows and until a stop, the rest requeued in order
    ran_ids = []
    stopped = False
    for number, (limit, batch) in enumerate(zip(consumer.limits, consumer.batches)):
        assert len(batch) <= limit
        checks = iter(decisions.checks[number])
        slowest = total = 0.0                   # of this batch's runs so far, from "done"
        cut = False
        for index, job in enumerate(batch):
            action = actions[job.id][0]
            cut = cut or index == decisions.cut_at.get(number)
            if not (cut or stopped):
                checked_slowest, elapsed, over = next(checks)
                assert over == expected_over(checked_slowest, elapsed)
                assert checked_slowest == pytest.approx(slowest, abs=1e-5)
                assert elapsed >= total - 1e-5
                cut = over
            if cut or stopped:
                assert action == "requeue", (job.id, action)
                assert job.id not in done and job.id not in RAN
                continue
            assert action != "requeue", (job.id, action)
            if kinds[job.id] == "bad":
                assert (action, job.id in done) == ("bury", False)
                continue
            assert done[job.id].outcome == ACTION_OUTCOME[action]
            slowest = max(slowest, done[job.id].duration)
            total += done[job.id].duration
            if kinds[job.id] != "gone":
                ran_ids.append(job.id)
            if job.id in HOOKS:
                stopped = True
        assert next(checks, None) is None       # no check unaccounted for
        if number in decisions.after:
            fetched, checked_slowest, elapsed = decisions.after[number]
            assert fetched == len(batch)
            assert checked_slowest == pytest.approx(slowest, abs=1e-5)
            assert elapsed >= total - 1e-5
    assert RAN == ran_ids
    assert h.supervisor.started() == list(done)

    # the limit of each fetch follows from the batch before
    assert consumer.limits[0] == 1 and max(consumer.limits) <= Prefetch.MAX
    for index, next_limit in enumerate(consumer.limits[1:]):
        limit = consumer.limits[index]
        assert next_limit == expected_next_limit(limit, *decisions.after[index]), \
            (index, consumer.limits, [len(b) for b in consumer.batches])

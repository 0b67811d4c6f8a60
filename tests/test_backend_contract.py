"""The backend contract (``jobrunner/backends/base.py``), stated once and run on every backend.

Each test is one behaviour, parametrised over "memory", "pgmq" and "sidekiq". A test talks to
the backend only through its roles (enqueuer, consumer, housekeeper, inspector) and through a
``Harness``, which knows the few things a test needs that the interface does not offer: how to
make a delayed or retried job due without waiting, how to store a body that is not a job, and
the places where a backend differs on purpose. Those differences are attributes of the
harness with a comment each; no assertion is loosened for every backend because one differs.

Real backends run on this test run's own servers (``tests/conftest.py``), and every test makes
its own queue names, so no assertion depends on what another test left.
"""

import datetime
import json
import os
import time
import uuid

import pytest

import jobrunner
from jobrunner.backends.memory import MemoryBackend, MemoryEnqueuer, MemoryStore
from jobrunner.config import Settings
from jobrunner.job import ErrorInfo
from jobrunner.process.state import SupervisorState

ERROR = ErrorInfo(error_class="ValueError", message="it broke")
HOUR = 3600.0
MONTH = 30 * 24 * HOUR     # far enough ahead for any backoff the tests cause
STATES = ("waiting", "scheduled", "retrying", "dead", "busy")


class Harness:
    """One backend with a fresh queue, and what the tests need to drive it."""

    name = ""
    enqueuer = None
    #: What ``discard`` does. Base ``Consumer.discard`` buries; only backends whose payloads
    #: can ask not to be kept (Sidekiq's ``retry: false``) drop the job.
    discard_keeps_dead = False
    #: Where a job a dead child held but never reported comes back: at once (the housekeeper
    #: sees the child's whole in-flight list), or when its lease ends (pgmq: only a token
    #: names a message).
    unreported_back_at_lease_end = False
    #: The attempt number such a job runs with next: pgmq counts every read of a message
    #: (``read_ct``), and a read nobody reported cannot be taken back; it still runs, and
    #: only the count shows it.
    unreported_attempt = 1

    def __init__(self, settings, queue=None):
        self.settings = settings
        self.registry = jobrunner.Registry()
        self.identity = f"contract:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.child_id = self.identity + ":1"
        self.queue = queue or self.new_queue()
        self.made = []
        self._backend = self._housekeeper = self._inspector = None

    # -- per backend ---------------------------------------------------------------------

    def new_queue(self):
        """A queue name no other test uses."""
        return "c_" + uuid.uuid4().hex[:12]

    def make_backend(self):
        raise NotImplementedError

    @property
    def conn(self):
        """The connection the web code enqueues on."""
        raise NotImplementedError

    def committed(self):
        """End the web code's transaction, where it has one."""

    def inject_bad_payload(self, queue):
        """Store a JSON array where a job body belongs, as a broken producer would."""
        raise NotImplementedError

    def inject_body(self, queue, text):
        """Store the JSON ``text`` where a job body belongs, as a broken producer would."""
        raise NotImplementedError

    def make_due(self):
        """Make every delayed or retried job of the test due now, without waiting."""
        raise NotImplementedError

    def invalid_payload_class(self, given):
        """The ``error_class`` a dead job that could not run shows, given the one buried with."""
        return given

    def dead_args(self, args):
        """The ``args`` ``dead_jobs`` shows for a job enqueued with ``args``."""
        return args

    def close(self):
        for made in self.made + [self._housekeeper, self._inspector]:
            if made is not None:
                made.close()

    # -- shared --------------------------------------------------------------------------

    def worker(self, queue=None, max_retries=25):
        """A new worker class on ``queue`` (this harness's own by default), registered."""
        name = "Contract" + uuid.uuid4().hex[:8]
        worker = type(name, (jobrunner.Worker,), {
            "enqueuer": self.enqueuer, "queue": queue or self.queue,
            "max_retries": max_retries, "handle": lambda self, args: None})
        self.registry.register(worker)
        return worker

    @property
    def backend(self):
        if self._backend is None:
            self._backend = self.make_backend()
        return self._backend

    def enqueue(self, worker, *args_list, delay=None):
        """Enqueue each args as a job (after ``delay`` seconds when given); returns the ids."""
        if delay is None:
            ids = worker.enqueue_batch(self.conn, list(args_list))
        else:
            ids = [worker.enqueue_in(self.conn, delay, args) for args in args_list]
        self.committed()
        return ids

    def consumer(self, queues=None, acks=None, child_id=None):
        """A consumer of this harness's child (a reconnect makes another with the same id),
        or of ``child_id``."""
        made = self.backend.consumer(queues or [self.queue], child_id or self.child_id,
                                     acks=acks)
        self.made.append(made)
        return made

    @property
    def housekeeper(self):
        if self._housekeeper is None:
            self._housekeeper = self.backend.housekeeper(self.identity)
        return self._housekeeper

    @property
    def inspector(self):
        if self._inspector is None:
            self._inspector = self.backend.inspector()
        return self._inspector

    def now(self):
        """The backend's time, epoch seconds."""
        return time.time()

    def state(self):
        return SupervisorState(identity=self.identity, hostname="contract", pid=os.getpid(),
                               started_at=time.time(), queues=[self.queue], concurrency=1,
                               children=(self.child_id,))

    def row(self, queue=None):
        """``stats`` of one queue: its counts by state, and latency."""
        queue = queue or self.queue
        rows = [q for q in self.inspector.stats()["queues"] if q["name"] == queue]
        assert len(rows) == 1, f"{queue} in stats: {rows}"
        return rows[0]

    def counts(self, queue=None):
        row = self.row(queue)
        return {key: row[key] for key in STATES}

    def dead(self, queue=None, ids=None):
        return self.inspector.dead_jobs(queue=queue or self.queue, ids=ids)


def only(**counts):
    """Counts by state: those given, every other state 0."""
    return dict(dict.fromkeys(STATES, 0), **counts)


class Clock:
    """Epoch seconds that a test can move forward."""

    def __init__(self):
        self.offset = 0.0

    def __call__(self):
        return time.time() + self.offset


class MemoryHarness(Harness):
    name = "memory"
    enqueuer = MemoryEnqueuer

    def __init__(self, settings):
        self.clock = Clock()
        self.store = MemoryStore(clock=self.clock)
        super().__init__(settings)

    def make_backend(self):
        return MemoryBackend(self.settings, self.registry, store=self.store)

    def now(self):
        return self.clock()

    @property
    def conn(self):
        return self.store

    def inject_bad_payload(self, queue):
        self.store.push(queue, ["[1, 2]"])

    def inject_body(self, queue, text):
        self.store.push(queue, [text])

    def make_due(self):
        self.clock.offset += MONTH        # the store shows jobs by the time of its clock


class PgmqHarness(Harness):
    name = "pgmq"
    enqueuer = jobrunner.PgEnqueuer
    # pgmq messages carry no "discard" option: the base Consumer.discard buries the job.
    discard_keeps_dead = True
    unreported_back_at_lease_end = True
    unreported_attempt = 2

    def __init__(self, settings, pg_conn, queue_name):
        self.pg_conn = pg_conn
        self.extra_queues = []            # dropped by close; queue_name's fixture drops its own
        super().__init__(settings, queue=queue_name)

    def new_queue(self):
        name = "t_" + uuid.uuid4().hex[:12]
        self.extra_queues.append(name)
        return name

    def make_backend(self):
        from jobrunner.backends.pgmq.backend import PgmqBackend
        return PgmqBackend(self.settings, self.registry)

    @property
    def conn(self):
        return self.pg_conn

    def committed(self):
        self.pg_conn.commit()

    def inject_bad_payload(self, queue):
        with self.pg_conn.cursor() as cur:
            cur.execute("SELECT pgmq.create(%s); SELECT pgmq.send(%s, '[1, 2]'::jsonb)",
                        (queue, queue))
        self.pg_conn.commit()

    def inject_body(self, queue, text):
        with self.pg_conn.cursor() as cur:
            cur.execute("SELECT pgmq.create(%s); SELECT pgmq.send(%s, %s::jsonb)",
                        (queue, queue, text))
        self.pg_conn.commit()

    def end_leases(self):
        """End every lease of the test's queues now, as if its time had passed."""
        self._make_visible("read_ct > 0")

    def make_due(self):
        # Hidden, never read (delayed), or hidden after a failed read (its error header records
        # this very read): due now. Leased messages keep their lease.
        self._make_visible("read_ct = 0 OR "
                           "headers -> 'jobrunner_error' -> 'attempts' = to_jsonb(read_ct)")

    def _make_visible(self, which):
        """Make the hidden messages of the test's queues that match ``which`` visible now."""
        for queue in [self.queue] + self.extra_queues:
            with self.pg_conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pgmq.list_queues() WHERE queue_name = %s", (queue,))
                if cur.fetchone():
                    cur.execute(f'UPDATE pgmq."q_{queue}" SET vt = clock_timestamp() '
                                f"WHERE vt > clock_timestamp() AND ({which})")
        self.pg_conn.commit()

    def close(self):
        super().close()
        with self.pg_conn.cursor() as cur:
            for queue in self.extra_queues:
                cur.execute("SELECT pgmq.drop_queue(queue_name) FROM pgmq.list_queues() "
                            "WHERE queue_name = %s", (queue,))
        self.pg_conn.commit()


class SidekiqHarness(Harness):
    name = "sidekiq"
    enqueuer = jobrunner.SidekiqEnqueuer

    def __init__(self, settings, redis_conn):
        self.redis_conn = redis_conn
        super().__init__(settings)

    def make_backend(self):
        from jobrunner.backends.sidekiq.backend import SidekiqBackend
        return SidekiqBackend(self.settings, self.registry)

    @property
    def conn(self):
        return self.redis_conn

    def inject_bad_payload(self, queue):
        self.redis_conn.lpush("queue:" + queue, "[1, 2]")

    def inject_body(self, queue, text):
        self.redis_conn.lpush("queue:" + queue, text)

    def make_due(self):
        # Sidekiq's poller moves due "retry" and "schedule" entries to their queues; run it
        # with a clock a month ahead (the database is this test's own).
        import redis
        from jobrunner.backends.sidekiq.housekeeper import SidekiqHousekeeper
        client = redis.Redis.from_url(self.settings.redis_url, decode_responses=True)
        try:
            SidekiqHousekeeper(client, self.identity + "-poller", registry=self.registry,
                               clock=lambda: time.time() + MONTH).poll()
        finally:
            client.close()

    def invalid_payload_class(self, given):
        # A body that is not a job hash goes to "dead" wrapped as a jobrunner.InvalidPayload
        # job whose error_class is "InvalidPayload", whatever the child buried it with.
        return "InvalidPayload"

    def dead_args(self, args):
        # The dead set shows Sidekiq's own "args" array, as its Web UI does: one job argument
        # is the array's one element.
        return [args]


@pytest.fixture(params=["memory", "pgmq", "sidekiq"])
def contract(request):
    if request.param == "memory":
        harness = MemoryHarness(Settings())
    elif request.param == "pgmq":
        harness = PgmqHarness(Settings(pg_dsn=request.getfixturevalue("pg_dsn")),
                              request.getfixturevalue("pg_conn"),
                              request.getfixturevalue("queue_name"))
    else:
        harness = SidekiqHarness(Settings(redis_url=request.getfixturevalue("redis_url")),
                                 request.getfixturevalue("redis_conn"))
    yield harness
    harness.close()


def fetch(consumer, limit=1):
    """What is fetchable now (no waiting)."""
    return consumer.fetch(0, limit=limit)


def one(consumer):
    jobs = fetch(consumer)
    assert len(jobs) == 1, jobs
    return jobs[0]


# -- enqueue and fetch ----------------------------------------------------------------------

def test_enqueue_then_fetch_gives_the_job(contract):
    worker = contract.worker()
    [job_id] = contract.enqueue(worker, {"n": [1, "é"]})
    consumer = contract.consumer()
    job = one(consumer)
    assert (job.id, job.worker_name, job.args, job.attempt, job.queue, job.problem) == (
        job_id, worker.name, {"n": [1, "é"]}, 1, contract.queue, None)
    assert job.enqueued_at is None or abs(job.enqueued_at - time.time()) < 60
    json.dumps(consumer.token(job))            # a token is a small JSON value
    assert fetch(consumer) == [], "a fetched job is not handed out twice"


def test_ack_removes_the_job(contract):
    worker = contract.worker()
    contract.enqueue(worker, "now", "later")
    consumer = contract.consumer()
    first, second = fetch(consumer, limit=2)
    consumer.ack(first)
    consumer.ack_later(second)                  # held back until the next fetch or flush
    consumer.flush()
    assert fetch(consumer, limit=2) == []
    assert contract.counts() == only()
    assert contract.dead() == []


def test_a_delayed_job_waits_until_due_then_runs_as_its_first_attempt(contract):
    worker = contract.worker()
    [job_id] = contract.enqueue(worker, "later", delay=HOUR)
    consumer = contract.consumer()
    assert fetch(consumer) == []
    assert contract.counts() == only(scheduled=1)
    contract.make_due()
    job = one(consumer)
    assert (job.id, job.args, job.attempt) == (job_id, "later", 1)


# -- failures -------------------------------------------------------------------------------

def test_retry_hides_the_job_until_due_then_it_runs_again_as_attempt_2(contract):
    worker = contract.worker()
    [job_id] = contract.enqueue(worker, {"k": 1})
    consumer = contract.consumer()
    consumer.retry(one(consumer), HOUR, ERROR)
    assert fetch(consumer) == []
    assert contract.counts() == only(retrying=1)
    contract.make_due()
    again = one(consumer)
    assert (again.id, again.worker_name, again.args, again.attempt) == (
        job_id, worker.name, {"k": 1}, 2)


def test_bury_keeps_the_job_in_dead_with_its_error_and_attempts(contract):
    worker = contract.worker()
    [job_id] = contract.enqueue(worker, {"n": 1})
    consumer = contract.consumer()
    consumer.retry(one(consumer), HOUR, ERROR)
    contract.make_due()
    consumer.bury(one(consumer), ErrorInfo(error_class="KeyError", message="'n' for good"))
    assert fetch(consumer) == []
    [entry] = contract.dead()
    assert entry == {"backend": contract.name, "queue": contract.queue, "id": job_id,
                     "msg_id": entry["msg_id"], "worker": worker.name,
                     "args": contract.dead_args({"n": 1}), "error_class": "KeyError",
                     "error_message": "'n' for good", "attempts": 2,
                     "died_at": entry["died_at"]}
    assert abs(entry["died_at"] - contract.now()) < 60
    assert contract.dead(ids=[job_id]) == [entry]
    assert contract.counts() == only(dead=1)


def test_dead_retry_puts_the_job_back_with_its_id_and_fresh_attempts(contract):
    worker = contract.worker()
    [job_id] = contract.enqueue(worker, {"k": [1, 2]})
    consumer = contract.consumer()
    consumer.bury(one(consumer), ERROR)
    done, skipped, ambiguous = contract.inspector.dead_action(
        "retry", ids=[job_id], queue=contract.queue)
    assert ([e["id"] for e in done], skipped, ambiguous) == ([job_id], [], [])
    assert contract.dead() == []
    again = one(consumer)
    assert (again.id, again.worker_name, again.args, again.attempt) == (
        job_id, worker.name, {"k": [1, 2]}, 1)


def test_dead_delete_removes_the_job(contract):
    worker = contract.worker()
    [job_id, kept_id] = contract.enqueue(worker, "gone", "kept")
    consumer = contract.consumer()
    for job in fetch(consumer, limit=2):
        consumer.bury(job, ERROR)
    done, skipped, ambiguous = contract.inspector.dead_action(
        "delete", ids=[job_id], queue=contract.queue)
    assert ([e["id"] for e in done], skipped, ambiguous) == ([job_id], [], [])
    assert [e["id"] for e in contract.dead()] == [kept_id]
    assert fetch(consumer) == []
    assert contract.counts()["dead"] == 1


def test_discard_leaves_no_trace(contract):
    worker = contract.worker()
    [job_id] = contract.enqueue(worker, "drop me")
    consumer = contract.consumer()
    consumer.discard(one(consumer), ERROR)
    assert fetch(consumer) == []
    if contract.discard_keeps_dead:
        assert [e["id"] for e in contract.dead()] == [job_id]
    else:
        assert contract.dead() == []
        assert contract.counts() == only()


def test_a_payload_that_cannot_run_comes_back_with_a_problem_and_bury_keeps_it(contract):
    contract.worker()
    contract.inject_bad_payload(contract.queue)
    consumer = contract.consumer()
    bad = one(consumer)
    assert isinstance(bad.problem, str) and bad.problem
    assert (bad.queue, bad.attempt) == (contract.queue, 1)
    consumer.bury(bad, ErrorInfo(error_class="jobrunner.InvalidPayload", message=bad.problem))
    assert fetch(consumer) == []
    [entry] = contract.dead()
    assert entry["error_class"] == contract.invalid_payload_class("jobrunner.InvalidPayload")
    assert entry["error_message"] == bad.problem
    assert contract.counts() == only(dead=1)


def test_a_body_too_deep_to_decode_is_listed_as_unreadable_beside_the_other_dead_jobs(contract):
    worker = contract.worker()
    [job_id] = contract.enqueue(worker, "fine")
    contract.inject_body(contract.queue, "[" * 10000 + "]" * 10000)
    consumer = contract.consumer()
    jobs = fetch(consumer, limit=2)
    assert sorted(bool(job.problem) for job in jobs) == [False, True]
    for job in jobs:
        consumer.bury(job, ErrorInfo(error_class="jobrunner.InvalidPayload", message=job.problem)
                      if job.problem else ERROR)
    # Sidekiq keeps such text raw, with no queue in it: look in every queue.
    entries = [e for e in contract.inspector.dead_jobs() if e["queue"] in (contract.queue, None)]
    [fine] = [e for e in entries if e["id"] == job_id]
    assert (fine["worker"], fine["error_class"]) == (worker.name, ERROR.error_class)
    [bad] = [e for e in entries if e is not fine]
    assert (bad["worker"], bad["error_class"]) == (None, "jobrunner.Unreadable")
    assert "nested too deeply" in bad["error_message"]
    [excerpt] = bad["args"]
    assert excerpt.startswith("[[[[") and excerpt.endswith("…") and len(excerpt) <= 1001


# -- putting back ---------------------------------------------------------------------------

def test_requeue_puts_the_job_back_unchanged_and_first_in_line(contract):
    worker = contract.worker()
    [first_id] = contract.enqueue(worker, "first")
    consumer = contract.consumer()
    first = one(consumer)
    contract.enqueue(worker, "second", "third")
    consumer.requeue(first)
    jobs = fetch(consumer, limit=3)
    assert [(j.args, j.attempt) for j in jobs] == [("first", 1), ("second", 1), ("third", 1)]
    assert jobs[0].id == first_id


def test_requeue_many_keeps_the_order_of_the_batch(contract):
    worker = contract.worker()
    contract.enqueue(worker, "a", "b", "c", "d")
    consumer = contract.consumer()
    batch = fetch(consumer, limit=4)
    assert [job.args for job in batch] == ["a", "b", "c", "d"]
    consumer.ack(batch[0])
    contract.enqueue(worker, "e")
    consumer.requeue_many(batch[1:])
    again = fetch(consumer, limit=4)
    assert [(j.args, j.attempt) for j in again] == [("b", 1), ("c", 1), ("d", 1), ("e", 1)]
    assert [j.id for j in again[:3]] == [j.id for j in batch[1:]]


def test_acks_a_lost_consumer_held_are_written_by_the_next_one(contract):
    worker = contract.worker()
    contract.enqueue(worker, "done", "unstarted")
    first = contract.consumer()
    done, unstarted = fetch(first, limit=2)
    first.ack_later(done)
    acks = first.take_unsent_acks()             # the connection is gone; the child keeps them
    assert acks is not None
    assert first.take_unsent_acks() is None     # taken out: none left behind
    second = contract.consumer(acks=acks)       # the same child, reconnected
    second.requeue_many([unstarted])            # what the child does with the unstarted rest
    second.flush()
    [again] = fetch(second, limit=2)
    assert (again.id, again.args, again.attempt) == (unstarted.id, "unstarted", 1)
    assert contract.dead() == []


# -- recovery after a child stopped ---------------------------------------------------------

def test_a_crash_counts_the_run_as_a_failed_attempt(contract):
    worker = contract.worker(max_retries=1)
    [job_id] = contract.enqueue(worker, "poison")
    consumer = contract.consumer()
    job = one(consumer)
    contract.housekeeper.recover(contract.child_id, [consumer.token(job)], crashed=True,
                                 reason="died")
    assert fetch(consumer) == []
    assert contract.counts() == only(retrying=1)
    contract.make_due()
    again = one(consumer)
    assert (again.id, again.attempt) == (job_id, 2)


def test_a_crash_on_the_last_attempt_buries_the_job_with_the_reason(contract):
    worker = contract.worker(max_retries=0)
    [job_id] = contract.enqueue(worker, "poison")
    consumer = contract.consumer()
    job = one(consumer)
    contract.housekeeper.recover(contract.child_id, [consumer.token(job)], crashed=True,
                                 reason="timeout")
    [entry] = contract.dead()
    assert (entry["id"], entry["error_class"], entry["attempts"]) == (job_id, "JobTimeout", 1)
    assert fetch(consumer) == []


def test_a_shutdown_puts_the_job_back_unchanged_and_its_old_receipt_settles_nothing(contract):
    worker = contract.worker()
    [job_id] = contract.enqueue(worker, "interrupted")
    consumer = contract.consumer()
    job = one(consumer)
    contract.housekeeper.recover(contract.child_id, [consumer.token(job)], crashed=False)
    consumer.bury(job, ERROR)                   # too late: recovery already put it back
    assert contract.dead() == []
    other_child = contract.consumer(child_id=contract.identity + ":2")
    again = one(other_child)
    assert (again.id, again.args, again.attempt) == (job_id, "interrupted", 1)
    # The first child's receipt names its own delivery only, not the one made since.
    consumer.bury(job, ERROR)
    assert contract.dead() == []
    other_child.ack(again)
    assert contract.counts() == only()


def test_held_jobs_go_back_unchanged_when_the_running_one_crashed(contract):
    worker = contract.worker(max_retries=1)
    contract.enqueue(worker, "running", "held")
    consumer = contract.consumer()
    running, held = fetch(consumer, limit=2)
    contract.housekeeper.recover(contract.child_id, [consumer.token(running)], crashed=True,
                                 held=[consumer.token(held)])
    assert contract.counts() == only(waiting=1, retrying=1)
    [again] = fetch(consumer, limit=2)
    assert (again.id, again.attempt) == (held.id, 1)


def test_a_child_killed_while_idle_has_nothing_charged(contract):
    # Killed for silence with no job running (frozen in a fetch): what it held, including a job
    # the fetch handed over after it stopped reading, never began, so none is charged a run.
    worker = contract.worker(max_retries=0)
    contract.enqueue(worker, "reported", "handed over late")
    consumer = contract.consumer()
    reported, late = fetch(consumer, limit=2)
    contract.housekeeper.recover(contract.child_id, [], crashed=True, reason="heartbeat",
                                 held=[consumer.token(reported)])
    if contract.unreported_back_at_lease_end:
        assert contract.counts() == only(waiting=1, busy=1)
        contract.end_leases()
    assert contract.counts() == only(waiting=2)
    assert contract.dead() == []
    again = fetch(consumer, limit=2)
    again += fetch(consumer, limit=2)
    assert sorted((job.id, job.attempt) for job in again) == sorted(
        [(reported.id, 1), (late.id, contract.unreported_attempt)])


def test_finished_jobs_are_acked_not_run_again(contract):
    worker = contract.worker()
    contract.enqueue(worker, "finished", "held")
    consumer = contract.consumer()
    finished, held = fetch(consumer, limit=2)
    consumer.ack_later(finished)
    consumer.take_unsent_acks()                 # the child dies before it writes the ack
    contract.housekeeper.recover(
        contract.child_id, [], crashed=True, held=[consumer.token(held)],
        finished=[{"token": consumer.token(finished), "worker": worker.name}])
    [again] = fetch(consumer, limit=2)
    assert (again.id, again.attempt) == (held.id, 1)
    assert contract.dead() == []
    consumer.ack(again)
    assert contract.counts() == only()


# -- the inspector --------------------------------------------------------------------------

def test_stats_count_each_state_of_the_queue(contract):
    worker = contract.worker()
    contract.enqueue(worker, "retry", "dead", "w1", "w2")
    contract.enqueue(worker, "later", delay=HOUR)
    consumer = contract.consumer()
    consumer.retry(one(consumer), HOUR, ERROR)
    consumer.bury(one(consumer), ERROR)
    row = contract.row()
    assert {key: row[key] for key in STATES} == {
        "waiting": 2, "scheduled": 1, "retrying": 1, "dead": 1, "busy": 0}
    assert 0.0 <= row["latency"] < 60
    section = contract.inspector.stats()
    for key in ("waiting", "scheduled", "retrying", "dead"):
        assert section["totals"][key] == sum(q[key] for q in section["queues"]), key
    assert set(section["totals"]) >= {"processed", "failed"}


def test_depths_report_waiting_per_queue_and_totals_of_the_whole_backend(contract):
    busy, other, unused = contract.queue, contract.new_queue(), contract.new_queue()
    contract.enqueue(contract.worker(busy), "a", "b", "dead")
    contract.enqueue(contract.worker(other), "c")
    dead_before = contract.inspector.depths([busy])["totals"]["dead"]
    consumer = contract.consumer([busy])
    consumer.bury(one(consumer), ERROR)
    depths = contract.inspector.depths([busy, unused, other])
    assert {q: row["waiting"] for q, row in depths["queues"].items()} == {
        busy: 2, unused: 0, other: 1}
    assert all(row["latency"] >= 0.0 for row in depths["queues"].values())
    assert depths["totals"]["dead"] == dead_before + 1
    # Every queue's, as in stats, not only the queues named.
    totals = contract.inspector.stats()["totals"]
    assert depths["totals"] == {key: totals[key] for key in ("scheduled", "retrying", "dead")}
    assert contract.inspector.depths([unused])["totals"] == depths["totals"]


def test_health_and_the_stored_periodic_schedules(contract):
    worker = contract.worker()
    contract.registry.register_periodic(worker, "0 0 1 1 *", args={"k": 1})
    assert contract.housekeeper.tick(contract.state()) == []
    [listed] = [s for s in contract.inspector.schedules() if s["worker"] == worker.name]
    assert {k: listed[k] for k in ("cron", "args", "timezone", "last_run")} == {
        "cron": "0 0 1 1 *", "args": {"k": 1}, "timezone": "UTC", "last_run": None}
    assert listed["next_run"] > datetime.datetime.now(datetime.timezone.utc)
    assert listed["next_run"].utcoffset() is not None
    assert fetch(contract.consumer()) == [], "a tick from before the schedule existed"
    health = contract.inspector.health()
    assert health["version"] is None or isinstance(health["version"], str)
    assert isinstance(health["warnings"], list)

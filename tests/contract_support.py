"""The backend contract's harness: one backend with a fresh queue, and how tests drive it.

Shared by the contract suites (``test_backend_contract.py``, ``test_operator_contract.py``);
see the first for what a harness is for.
"""

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

    def state(self, **fields):
        """The supervisor snapshot a housekeeper's tick is given; ``fields`` override."""
        values = dict(identity=self.identity, hostname="contract", pid=os.getpid(),
                      started_at=time.time(), queues=[self.queue], concurrency=1,
                      children=(self.child_id,))
        return SupervisorState(**dict(values, **fields))

    def forget_housekeeper(self):
        """After a test closed the housekeeper itself."""
        self._housekeeper = None

    @staticmethod
    def expire_pause_checks(consumer):
        """Make ``consumer`` read the paused queues at its next fetch, as it does once
        ``PAUSE_CHECK_SECONDS`` have passed."""
        consumer.paused.expire()

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
        # As if the time had passed: a consumer knows when its queues' hidden messages were
        # due (``pgmq/survey.py``), and that is now out of date.
        from jobrunner.backends.pgmq.survey import QueueKnowledge
        for consumer in self.made:
            consumer.known = QueueKnowledge(consumer.known.recheck)

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



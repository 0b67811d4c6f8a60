"""How a pgmq consumer chooses what to read: many queues, their order, and an idle child's cost."""

import select
import time
import uuid

import psycopg2
import pytest

import jobrunner
from jobrunner.backends.pgmq.backend import PgmqBackend
from jobrunner.config import Settings


class CountingCursor:
    """A consumer's cursor that counts the statements sent through it."""

    def __init__(self, cursor):
        self.cursor, self.statements = cursor, 0

    def execute(self, *args):
        self.statements += 1
        return self.cursor.execute(*args)

    def __getattr__(self, name):
        return getattr(self.cursor, name)


@pytest.fixture
def opened():
    """Connections and consumers a test opens, closed after it."""
    things = []
    yield things
    for thing in reversed(things):
        thing.close()


@pytest.fixture
def queues(pg_dsn, opened):
    """``queues(n)``: n fresh queue names, their queues dropped after the test."""
    made = []
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True

    def make(count):
        prefix = "t_" + uuid.uuid4().hex[:10]
        names = [f"{prefix}_{i}" for i in range(count)]
        made.extend(names)
        with conn.cursor() as cur:
            for name in names:
                cur.execute("SELECT pgmq.create(%s)", (name,))
        return names
    yield make
    for thing in reversed(opened):      # a lock one still held would make the drop wait
        thing.close()
    opened.clear()
    with conn.cursor() as cur:
        for name in made:
            cur.execute("SELECT pgmq.drop_queue(%s) FROM pgmq.meta WHERE queue_name = %s",
                        (name, name))
    conn.close()


@pytest.fixture
def consumer_of(pg_dsn, opened):
    """``consumer_of(queues, **settings)``: a consumer whose cursor counts its statements."""
    def make(names, **settings):
        consumer = consumer_for(pg_dsn, names, **settings)
        opened.append(consumer)
        return consumer
    return make


def consumer_for(pg_dsn, names, **settings):
    registry = jobrunner.Registry()
    for name in names:
        registry.register(type(f"W_{name}", (jobrunner.Worker,), {
            "queue": name, "enqueuer": jobrunner.PgEnqueuer, "handle": lambda self, a: None}))
    backend = PgmqBackend(Settings(pg_dsn=pg_dsn, **settings), registry)
    consumer = backend.consumer(names, "test-child")
    consumer.cursor = CountingCursor(consumer.cursor)
    return consumer


def send(pg_dsn, queue, count=1, notify=True):
    """``count`` jobs for ``queue``'s worker, with the NOTIFY jobrunner's enqueuer sends, or
    without one, as a producer using pgmq's own ``send`` does."""
    conn = psycopg2.connect(pg_dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT pgmq.send(%s, jsonb_build_object('metadata', jsonb_build_object("
                    "'id', gen_random_uuid()::text, 'worker_name', %s), 'args', 1)) "
                    "FROM generate_series(1, %s)", (queue, f"W_{queue}", count))
        if notify:
            cur.execute("SELECT pg_notify('jobrunner_pgmq', %s)", (queue,))
    conn.commit()
    conn.close()


def test_an_idle_fetch_costs_one_statement_per_fetch_timeout(pg_dsn, queues, consumer_of):
    # One survey (every queue's next visible time and the paused queues) per poll interval;
    # a wait that brought nothing is not followed by a second look.
    consumer = consumer_of(queues(1), fetch_timeout=0.2)
    for _ in range(3):
        assert consumer.fetch(0.2) == []
    assert consumer.cursor.statements == 3


def test_an_idle_fetch_of_many_queues_costs_the_same(pg_dsn, queues, consumer_of):
    consumer = consumer_of(queues(50), fetch_timeout=0.2)
    for _ in range(3):
        assert consumer.fetch(0.2) == []
    assert consumer.cursor.statements == 3


def test_a_job_in_the_last_of_many_queues_costs_a_survey_and_one_read(pg_dsn, queues, consumer_of):
    names = queues(50)
    consumer = consumer_of(names, fetch_timeout=0.2)
    assert consumer.fetch(0.2) == []
    send(pg_dsn, names[-1], count=3, notify=False)
    before = consumer.cursor.statements
    jobs = consumer.fetch(0.2, limit=3)
    assert [job.queue for job in jobs] == [names[-1]] * 3
    assert consumer.cursor.statements - before == 2


def test_draining_one_of_many_queues_reads_only_that_queue(pg_dsn, queues, consumer_of):
    names = queues(20)
    send(pg_dsn, names[10], count=30)
    consumer = consumer_of(names, pgmq_batch=5, fetch_timeout=30)
    got = []
    while len(got) < 30:
        batch = consumer.fetch(1, limit=5)
        assert batch, "30 jobs wait: no fetch may come back empty"
        got += batch
        for job in batch:
            consumer.ack_later(job)
    # one survey, then one read per batch of 5 (the acks ride on the reads)
    assert consumer.cursor.statements == 1 + 6


def test_strict_order_takes_a_notified_job_of_a_higher_queue_first(pg_dsn, queues, consumer_of):
    high, low = queues(2)
    send(pg_dsn, low, count=20)
    consumer = consumer_of([high, low], pgmq_batch=1, fetch_timeout=30)
    assert [job.queue for job in consumer.fetch(1)] == [low]
    send(pg_dsn, high)            # notified: seen at once, though the survey is fresh
    assert select.select([consumer.conn], [], [], 5)[0], "the NOTIFY reaches the consumer"
    assert [job.queue for job in consumer.fetch(1)] == [high]
    assert [job.queue for job in consumer.fetch(1)] == [low]


def test_a_job_sent_without_notify_is_seen_within_fetch_timeout(pg_dsn, queues, consumer_of):
    high, low = queues(2)
    send(pg_dsn, low, count=5000)
    consumer = consumer_of([high, low], pgmq_batch=1, fetch_timeout=0.3)
    assert [job.queue for job in consumer.fetch(1)] == [low]
    send(pg_dsn, high, notify=False)
    sent = time.monotonic()
    taken = [low]
    while taken[-1] != high:
        [job] = consumer.fetch(1)
        taken.append(job.queue)
    # the survey of the queues read empty is at most one fetch_timeout old; the rest is margin
    # for a loaded machine
    assert time.monotonic() - sent < 0.3 + 0.5
    assert len(taken) > 2, "busy on the lower queue, the consumer did not look at once"


def test_rows_another_transaction_holds_cost_one_look_per_fetch_timeout(pg_dsn, queues,
                                                                        consumer_of, opened):
    [name] = queues(1)
    send(pg_dsn, name, notify=False)
    holder = psycopg2.connect(pg_dsn)
    opened.append(holder)
    with holder.cursor() as cur:       # an operator's open transaction locks the only job
        cur.execute(f'SELECT msg_id FROM pgmq."q_{name}" FOR UPDATE')
    consumer = consumer_of([name], fetch_timeout=0.2)
    started = time.monotonic()
    for _ in range(3):
        assert consumer.fetch(0.2) == []
    polls = (time.monotonic() - started) / 0.2
    # the survey sees a visible job, the read finds it held, and neither is sent again before
    # the next poll: a survey and a read per fetch_timeout, not a loop of them
    assert consumer.cursor.statements <= 2 * (polls + 1)
    holder.rollback()
    assert len(consumer.fetch(0.5)) == 1

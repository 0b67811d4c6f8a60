"""Interop with pgmq's own Python client (`pgmq` on PyPI): it sends, we run; we send, it reads."""

import pgmq
import psycopg2
import pytest

import jobrunner
from jobrunner.backends.pgmq.backend import PgmqBackend
from jobrunner.process.channel import Channel
from jobrunner.process.child import ChildLoop
from jobrunner.config import Settings

RAN = []


class Interop(jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer

    def handle(self, args):
        RAN.append(args)


@pytest.fixture
def client(pg_dsn):
    queue = pgmq.PGMQueue(conn_string=pg_dsn, init_extension=False, pool_size=1)
    yield queue
    queue.close()


def test_a_message_sent_by_pgmqs_client_in_our_envelope_runs_here(pg_dsn, client, queue_name):
    worker = type("Interop", (Interop,), {"queue": queue_name})
    registry = jobrunner.Registry()
    registry.register(worker)
    client.create_queue(queue_name)
    body = {"metadata": {"id": "from-pgmq-client", "worker_name": "Interop"},
            "args": {"sent_by": "pgmq-py"}}
    msg_id = client.send(queue_name, body, headers={"trace": "abc"})
    consumer = PgmqBackend(Settings(pg_dsn=pg_dsn), registry).consumer([queue_name], "c")
    ours, theirs = Channel.pair()
    loop = ChildLoop(consumer.backend, registry, Settings(), [queue_name], "c", theirs, "test")
    loop.consumer = consumer
    RAN.clear()
    [job] = consumer.fetch(1)
    assert job.receipt[1] == msg_id
    loop.run_job(job)
    assert RAN == [{"sent_by": "pgmq-py"}]
    assert client.read(queue_name, vt=0) is None, "a finished job is deleted from the queue"
    consumer.close()
    ours.close()
    theirs.close()


def test_a_job_we_enqueue_reads_back_through_pgmqs_client(pg_dsn, client, queue_name):
    worker = type("Interop", (Interop,), {"queue": queue_name})
    conn = psycopg2.connect(pg_dsn)
    job_id = worker.enqueue(conn, [1, "two", {"three": 3}])
    worker.enqueue_in(conn, 3600, "later")
    conn.commit()
    conn.close()
    message = client.read(queue_name, vt=30)
    assert message.message == {"metadata": {"id": job_id, "worker_name": "Interop"},
                               "args": [1, "two", {"three": 3}]}
    assert message.read_ct == 1
    assert client.read(queue_name, vt=30) is None, "the delayed job stays hidden"
    assert client.metrics(queue_name).queue_length == 2

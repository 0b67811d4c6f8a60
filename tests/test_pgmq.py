"""The pgmq backend against a real Postgres with pgmq's own SQL: enqueue, fetch, settle."""

import json
import os
import threading
import time
import uuid

import psycopg2
import pytest

import jobrunner
from jobrunner.backends.pgmq.backend import PgmqBackend
from jobrunner.backends.pgmq.enqueue import envelope_texts
from jobrunner.config import Settings
from jobrunner.errors import BackendUnavailable
from jobrunner.job import ErrorInfo


def make_worker(queue, **options):
    options.setdefault("enqueuer", jobrunner.PgEnqueuer)
    options.setdefault("queue", queue)
    options["handle"] = lambda self, args: None
    return type("PgWorker", (jobrunner.Worker,), options)


def rows(dsn, queue, table="q"):
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(f'SELECT msg_id, read_ct, vt, message, headers FROM pgmq."{table}_{queue}" '
                        "ORDER BY msg_id")
            return cur.fetchall()
    except psycopg2.errors.UndefinedTable:
        return []
    finally:
        conn.close()


def consumer_for(pg_dsn, worker, **settings):
    registry = jobrunner.Registry()
    registry.register(worker)
    backend = PgmqBackend(Settings(pg_dsn=pg_dsn, **settings), registry)
    return backend.consumer([worker.queue], "test-child")


def test_envelope_texts_are_roadsters_envelope_around_the_encoded_args():
    texts = envelope_texts("Mail", ['{"to":"é"}', "[1,2]"], ["id-1", "id-2"],
                           metadata={"periodic": {"tick": 5}})
    assert [json.loads(t) for t in texts] == [
        {"metadata": {"id": "id-1", "worker_name": "Mail", "periodic": {"tick": 5}},
         "args": {"to": "é"}},
        {"metadata": {"id": "id-2", "worker_name": "Mail", "periodic": {"tick": 5}},
         "args": [1, 2]}]
    assert json.loads(envelope_texts('Odd "name"', ["null"], ["x"])[0]) == {
        "metadata": {"id": "x", "worker_name": 'Odd "name"'}, "args": None}


def test_fetch_parses_jobs_and_counts_attempts_with_read_ct(pg_dsn, pg_conn, queue_name):
    worker = make_worker(queue_name)
    job_id = worker.enqueue(pg_conn, {"x": 1})
    pg_conn.commit()
    consumer = consumer_for(pg_dsn, worker)
    [job] = consumer.fetch(1)
    assert (job.id, job.worker_name, job.args, job.attempt, job.queue) == (
        job_id, "PgWorker", {"x": 1}, 1, queue_name)
    assert job.problem is None
    consumer.retry(job, 0, ErrorInfo(error_class="ValueError", message="first"))
    [again] = consumer.fetch(1)
    assert again.attempt == 2
    consumer.ack(again)
    assert rows(pg_dsn, queue_name) == []
    consumer.close()


def test_fetch_wakes_on_a_committed_enqueue(pg_dsn, pg_conn, queue_name):
    worker = make_worker(queue_name)
    consumer = consumer_for(pg_dsn, worker)
    assert consumer.fetch(0.01) == []
    import threading
    timer = threading.Timer(0.3, lambda: (worker.enqueue(pg_conn, "late"), pg_conn.commit()))
    timer.start()
    started = time.monotonic()
    [job] = consumer.fetch(5)
    assert job.args == "late"
    assert time.monotonic() - started < 2, "the NOTIFY should wake the fetch well before 5s"
    timer.join()
    consumer.close()


@pytest.mark.parametrize("body, problem", [
    ([1, 2], "not a JSON object"), ("text", "not a JSON object"),
    ({"args": 1}, "no `metadata`"), ({"metadata": {"id": "x"}, "args": 1}, "no `worker_name`"),
    ({"metadata": {"id": "x", "worker_name": "PgWorker"}}, "no `args`"),
])
def test_malformed_messages_come_back_with_a_problem(pg_dsn, pg_conn, queue_name, body, problem):
    worker = make_worker(queue_name)
    consumer = consumer_for(pg_dsn, worker)
    with pg_conn.cursor() as cur:
        cur.execute("SELECT pgmq.send(%s, %s::jsonb)", (queue_name, json.dumps(body)))
    pg_conn.commit()
    [job] = consumer.fetch(1)
    assert problem in job.problem
    consumer.bury(job, ErrorInfo(error_class="jobrunner.InvalidPayload", message=job.problem))
    [(_, _, _, message, headers)] = rows(pg_dsn, queue_name, "a")
    assert message == body
    assert headers["jobrunner_error"]["error_class"] == "jobrunner.InvalidPayload"
    consumer.close()


def test_retry_records_the_error_and_hides_the_message(pg_dsn, pg_conn, queue_name):
    worker = make_worker(queue_name)
    worker.enqueue(pg_conn, 1)
    pg_conn.commit()
    consumer = consumer_for(pg_dsn, worker)
    [job] = consumer.fetch(1)
    consumer.retry(job, 60, ErrorInfo(error_class="KeyError", message="'k'"))
    [(_, read_ct, vt, _, headers)] = rows(pg_dsn, queue_name)
    assert read_ct == 1
    assert vt.timestamp() > time.time() + 55
    assert headers["jobrunner_error"]["error_class"] == "KeyError"
    assert headers["jobrunner_error"]["attempts"] == 1
    consumer.close()


def test_bury_archives_with_error_class_message_and_attempts(pg_dsn, pg_conn, queue_name):
    worker = make_worker(queue_name)
    worker.enqueue(pg_conn, 1)
    pg_conn.commit()
    consumer = consumer_for(pg_dsn, worker)
    [job] = consumer.fetch(1)
    consumer.bury(job, ErrorInfo(error_class="ValueError", message="nope"))
    assert rows(pg_dsn, queue_name) == []
    [(_, read_ct, _, message, headers)] = rows(pg_dsn, queue_name, "a")
    assert message["args"] == 1
    assert headers["jobrunner_error"] == {**headers["jobrunner_error"], "error_class": "ValueError",
                                          "error_message": "nope", "attempts": 1}
    consumer.close()


def test_success_action_archive_keeps_the_message(pg_dsn, pg_conn, queue_name):
    worker = make_worker(queue_name, success_action="archive")
    worker.enqueue(pg_conn, 1)
    pg_conn.commit()
    consumer = consumer_for(pg_dsn, worker)
    [job] = consumer.fetch(1)
    consumer.ack(job)
    [(_, _, _, message, headers)] = rows(pg_dsn, queue_name, "a")
    assert message["args"] == 1 and headers is None
    consumer.close()


def test_requeue_makes_the_job_visible_without_spending_an_attempt(pg_dsn, pg_conn, queue_name):
    worker = make_worker(queue_name)
    worker.enqueue(pg_conn, 1)
    pg_conn.commit()
    consumer = consumer_for(pg_dsn, worker)
    [job] = consumer.fetch(1)
    consumer.requeue(job)
    [again] = consumer.fetch(1)
    assert again.attempt == 1
    consumer.close()


def test_requeue_many_releases_a_batch_in_order_but_not_a_message_read_since(pg_dsn, pg_conn,
                                                                              queue_name):
    worker = make_worker(queue_name)
    worker.enqueue_batch(pg_conn, ["a", "b", "c", "d"])
    pg_conn.commit()
    consumer = consumer_for(pg_dsn, worker)
    jobs = consumer.fetch(1, limit=4)
    assert [job.args for job in jobs] == ["a", "b", "c", "d"]
    # "d"'s lease ran out and another child read it: its stale receipt must not release it.
    with pg_conn.cursor() as cur:
        cur.execute(f'UPDATE pgmq."q_{queue_name}" SET read_ct = read_ct + 1 '
                    "WHERE message->>'args' = 'd'")
    pg_conn.commit()
    consumer.requeue_many(jobs[1:])
    again = consumer.fetch(1, limit=4)
    assert [(job.args, job.attempt) for job in again] == [("b", 1), ("c", 1)]
    consumer.close()


def test_a_stale_release_cannot_free_a_message_another_child_read_since(pg_dsn, pg_conn,
                                                                         queue_name):
    worker = make_worker(queue_name)
    worker.enqueue(pg_conn, "m")
    pg_conn.commit()
    first, second = consumer_for(pg_dsn, worker), consumer_for(pg_dsn, worker)
    [mine] = first.fetch(1)
    first.requeue(mine)                         # read_ct back to 0
    [theirs] = second.fetch(1)                  # read_ct 1 again: the same number as mine
    assert theirs.attempt == mine.attempt == 1
    first.requeue(mine)                         # released twice (a retried recovery, say)
    assert first.fetch(0.05) == [], "the other child's lease must still hold"
    assert [r[1] for r in rows(pg_dsn, queue_name)] == [1]
    first.close()
    second.close()


def test_a_read_sets_last_read_at_like_pgmq_read(pg_dsn, pg_conn, queue_name):
    worker = make_worker(queue_name)
    worker.enqueue(pg_conn, 1)
    pg_conn.commit()
    consumer = consumer_for(pg_dsn, worker)
    before = time.time()
    consumer.fetch(1)
    with pg_conn.cursor() as cur:
        cur.execute(f'SELECT last_read_at FROM pgmq."q_{queue_name}"')
        (last_read_at,) = cur.fetchone()
    pg_conn.commit()
    assert before - 1 < last_read_at.timestamp() < time.time() + 1
    consumer.close()


def test_a_queue_table_without_last_read_at_reads_as_in_pgmq_1_5(pg_dsn, pg_conn, queue_name):
    worker = make_worker(queue_name)
    worker.enqueue(pg_conn, "old")
    with pg_conn.cursor() as cur:
        cur.execute(f'ALTER TABLE pgmq."q_{queue_name}" DROP COLUMN last_read_at')
    pg_conn.commit()
    consumer = consumer_for(pg_dsn, worker)
    [job] = consumer.fetch(1)
    assert (job.args, job.attempt) == ("old", 1)
    consumer.ack(job)
    assert rows(pg_dsn, queue_name) == []
    consumer.close()


def test_recovery_acks_what_succeeded_as_its_worker_would_and_releases_the_unstarted(
        pg_dsn, pg_conn, queue_name):
    deleter = make_worker(queue_name)
    archiver = make_worker(queue_name, name="Archiver", success_action="archive")
    deleter.enqueue_batch(pg_conn, ["deleted", "waited"])
    archiver.enqueue(pg_conn, "archived")
    pg_conn.commit()
    registry = jobrunner.Registry()
    registry.register(deleter)
    registry.register(archiver)
    backend = PgmqBackend(Settings(pg_dsn=pg_dsn), registry)
    consumer = backend.consumer([queue_name], "test-child")
    deleted, waited, archived = consumer.fetch(1, limit=3)
    keeper = backend.housekeeper("test-host")
    try:
        keeper.recover("test-child", [], crashed=False, held=[consumer.token(waited)],
                       finished=[{"token": consumer.token(job), "worker": job.worker_name}
                                 for job in (deleted, archived)])
    finally:
        keeper.close()
    assert [(r[3]["args"], r[1]) for r in rows(pg_dsn, queue_name)] == [("waited", 0)]
    assert [r[3]["args"] for r in rows(pg_dsn, queue_name, table="a")] == ["archived"]
    consumer.close()


def test_acks_a_lost_connection_kept_are_written_by_the_next_consumer(pg_dsn, pg_conn,
                                                                       queue_name):
    worker = make_worker(queue_name)
    worker.enqueue_batch(pg_conn, ["done", "next"])
    pg_conn.commit()
    first = consumer_for(pg_dsn, worker)
    done, unstarted = first.fetch(1, limit=2)
    first.ack_later(done)
    first.conn.close()                                  # the server went away
    with pytest.raises(psycopg2.InterfaceError):
        first.fetch(1)
    acks = first.take_unsent_acks()                     # the failed fetch kept them
    registry = jobrunner.Registry()
    registry.register(worker)
    second = PgmqBackend(Settings(pg_dsn=pg_dsn), registry).consumer([queue_name], "c",
                                                                     acks=acks)
    second.requeue_many([unstarted])
    second.flush()
    assert [(r[3]["args"], r[1]) for r in rows(pg_dsn, queue_name)] == [("next", 0)]
    second.close()


def test_a_message_nested_too_deeply_to_decode_is_buried_not_a_crash(pg_dsn, pg_conn,
                                                                      queue_name):
    worker = make_worker(queue_name)
    worker.enqueue(pg_conn, "normal")                   # creates the queue
    with pg_conn.cursor() as cur:
        cur.execute(f'INSERT INTO pgmq."q_{queue_name}" (vt, message) VALUES (clock_timestamp(), '
                    "(repeat('[', 5000) || repeat(']', 5000))::jsonb)")
    pg_conn.commit()
    consumer = consumer_for(pg_dsn, worker)
    normal, deep = consumer.fetch(1, limit=2)
    assert normal.args == "normal" and deep.problem == "message body is nested too deeply to decode"
    consumer.bury(deep, ErrorInfo(error_class="jobrunner.InvalidPayload", message=deep.problem))
    with pg_conn.cursor() as cur:
        cur.execute(f'SELECT count(*) FROM pgmq."a_{queue_name}"')
        assert cur.fetchone() == (1,)
    pg_conn.commit()
    consumer.close()


def test_read_lease_outlasts_the_worker_timeout_and_grace(pg_dsn, pg_conn, queue_name):
    worker = make_worker(queue_name, timeout=100)
    worker.enqueue(pg_conn, 1)
    pg_conn.commit()
    consumer = consumer_for(pg_dsn, worker)
    consumer.fetch(1)
    [(_, _, vt, _, _)] = rows(pg_dsn, queue_name)
    assert vt.timestamp() > time.time() + 100 + 5
    consumer.close()


def test_check_reports_missing_pgmq_and_unreachable_server(pg_dsn):
    unreachable = PgmqBackend(Settings(pg_dsn="postgresql://root@127.0.0.1:1/none"),
                              jobrunner.Registry())
    with pytest.raises(BackendUnavailable, match="unreachable"):
        unreachable.check()
    assert PgmqBackend(Settings(pg_dsn=pg_dsn), jobrunner.Registry()).check() == []


def test_a_server_that_does_not_answer_is_an_outage_a_child_waits_out():
    # A child reconnecting while Postgres restarts must back off and retry, not crash: the
    # error its new consumer raises is one of the backend's connection errors.
    from helpers import free_port
    backend = PgmqBackend(Settings(pg_dsn=f"postgresql://root@127.0.0.1:{free_port()}/x"),
                          jobrunner.Registry())
    with pytest.raises(BackendUnavailable) as caught:
        backend.consumer(["default"], "c")
    assert isinstance(caught.value, backend.connection_errors), caught.value
    assert "unreachable" in str(caught.value)


# -- operators: supervisors, paused queues, moves -------------------------------------------

def supervisor_state(identity, queue="default"):
    from jobrunner.process.state import SupervisorState
    return SupervisorState(identity=identity, hostname="pgtest", pid=os.getpid(),
                           started_at=time.time(), queues=[queue], concurrency=1)


def test_a_supervisor_that_stopped_beating_is_not_listed_and_is_pruned(pg_dsn, pg_conn):
    backend = PgmqBackend(Settings(pg_dsn=pg_dsn), jobrunner.Registry())
    gone, live = (f"{host}:1:{uuid.uuid4().hex[:12]}" for host in ("gone", "live"))
    with pg_conn.cursor() as cur:       # the row a supervisor killed with SIGKILL leaves
        cur.execute("INSERT INTO jobrunner.processes (identity, hostname, pid, started_at, "
                    "beat, concurrency, queues) VALUES (%s, 'gone', 1, now() - interval '1 h', "
                    "clock_timestamp() - interval '61 s', 1, '{default}')", (gone,))
    pg_conn.commit()
    inspector = backend.inspector()
    housekeeper = backend.housekeeper(live)
    try:
        assert gone not in [p["identity"] for p in inspector.processes()]
        assert inspector.signal(gone, "stop") is False
        assert housekeeper.tick(supervisor_state(live)) == []      # its first tick prunes
        with pg_conn.cursor() as cur:
            cur.execute("SELECT identity FROM jobrunner.processes WHERE identity IN (%s, %s)",
                        (gone, live))
            assert cur.fetchall() == [(live,)]
        pg_conn.rollback()
        assert live in [p["identity"] for p in inspector.processes()]
    finally:
        housekeeper.close()
        inspector.close()


def test_the_consumers_pause_read_leaves_its_transaction_usable_without_the_table(
        scratch_database):
    from jobrunner.backends.pgmq.install import install
    dsn = scratch_database()
    conn = psycopg2.connect(dsn)
    install(conn)
    with conn.cursor() as cur:      # a database the operator tables never reached
        cur.execute("DROP TABLE jobrunner.paused_queues")
    conn.commit()
    worker = make_worker("t_scratch")
    consumer = consumer_for(dsn, worker)
    try:
        consumer.conn.autocommit = False
        consumer.cursor.execute("SELECT 1")          # a transaction is open
        consumer.paused.expire()
        assert consumer.paused.serving() == ["t_scratch"]     # nothing is paused
        consumer.cursor.execute("SELECT 1")          # and the transaction still works
        assert consumer.conn.get_transaction_status() == \
            psycopg2.extensions.TRANSACTION_STATUS_INTRANS
        consumer.conn.rollback()
        consumer.conn.autocommit = True
        worker.enqueue(conn, "runs")
        conn.commit()
        consumer.paused.expire()
        assert [job.args for job in consumer.fetch(0)] == ["runs"]
    finally:
        consumer.close()
        conn.close()


def test_two_operators_running_the_same_retrying_job_at_once_move_it_once(pg_dsn, pg_conn,
                                                                          queue_name):
    worker = make_worker(queue_name)
    [job_id] = worker.enqueue_batch(pg_conn, ["r"])
    pg_conn.commit()
    consumer = consumer_for(pg_dsn, worker)
    [job] = consumer.fetch(0)
    consumer.retry(job, 3600, ErrorInfo(error_class="ValueError", message="first"))
    backend = PgmqBackend(Settings(pg_dsn=pg_dsn), jobrunner.Registry())
    operators = [backend.inspector() for _ in range(2)]
    results = [None, None]

    def run(index):
        results[index] = operators[index].job_action("retrying", "run", ids=[job_id])
    threads = [threading.Thread(target=run, args=(index,)) for index in range(2)]
    try:
        # Hold the row, so that both operators' moves wait on its lock and go one after the
        # other once it is released: the second must find the job moved.
        with pg_conn.cursor() as cur:
            cur.execute(f'SELECT 1 FROM pgmq."q_{queue_name}" FOR UPDATE')
        for thread in threads:
            thread.start()
        pids = [operator.conn.info.backend_pid for operator in operators]
        deadline = time.monotonic() + 10
        while waiting_on_a_lock(pg_dsn, pids) < 2:
            assert time.monotonic() < deadline, "the operators never reached the row lock"
            time.sleep(0.02)
        pg_conn.rollback()
        for thread in threads:
            thread.join(10)
        assert sorted(len(done) for done, _, _ in results) == [0, 1]
        [again] = consumer.fetch(0, limit=10)
        assert (again.id, again.attempt) == (job_id, 2)
    finally:
        pg_conn.rollback()
        for operator in operators:
            operator.close()
        consumer.close()


def waiting_on_a_lock(dsn, pids):
    """How many of the backends ``pids`` wait for a lock now."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted "
                        "AND pid = ANY(%s)", (pids,))
            return cur.fetchone()[0]
    finally:
        conn.close()

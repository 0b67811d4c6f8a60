"""The private server of one backend for ``scripts/scale.py``: enqueue, progress, sizes, counts.

``progress`` answers how many of the jobs enqueued after ``mark`` are done, without a scan:
on Redis what is left in the queue and the in-flight lists; on pgmq the lowest ``msg_id`` left
against the queue's id sequence (messages are read in id order, so the ids below it are done,
give or take the batches the children hold).
"""

CHUNK = 1000


def _fill(worker, conn, count, batch, commit=None):
    for start in range(0, count, batch):
        worker.enqueue_batch(conn, [{"n": n} for n in range(start, min(count, start + batch))])
        if commit:
            commit()


def first_id(queue):
    """The lowest ``msg_id`` left on ``queue``, a scalar subquery that reads the primary key's
    first live entry. Not ``EXISTS``: Postgres drops the ORDER BY and LIMIT inside one and may
    scan the heap, every dead row of a drained backlog included."""
    return f"(SELECT msg_id FROM pgmq.q_{queue} ORDER BY msg_id LIMIT 1)"


class RedisServer:
    backend = "sidekiq"

    def __init__(self, private):
        import redis
        self.server = private.start()
        self.client = redis.Redis.from_url(self.server.url, decode_responses=True)
        # Like the shared server: no persistence (a private test Redis fsyncs every write).
        self.client.config_set("appendonly", "no")
        self.env = {"JOBRUNNER_REDIS_URL": self.server.url}

    def mark(self, queue):
        return None

    def enqueue(self, worker, count, batch=CHUNK):
        _fill(worker, self.client, count, batch)

    def enqueue_spread(self, workers, count):
        for worker in workers:
            _fill(worker, self.client, count // len(workers), CHUNK)

    def remaining(self, queues):
        pipe = self.client.pipeline(transaction=False)
        for queue in queues:
            pipe.llen(f"queue:{queue}")
        for key in self.client.smembers("jobrunner:inflight"):
            pipe.llen(key)
        return sum(pipe.execute())

    def progress(self, queues, total, mark=None):
        return lambda: total - self.remaining(queues)

    def drained(self, queue):
        return self.remaining([queue]) == 0

    def memory(self):
        return self.client.info("memory")["used_memory"]

    def payload_size(self, queue):
        return len(self.client.lindex(f"queue:{queue}", 0).encode())

    def calls(self):
        return self.client.info("stats")["total_commands_processed"]

    def close(self):
        self.client.close()
        self.server.stop()


class PgmqServer:
    backend = "pgmq"

    def __init__(self, private):
        import psycopg2
        self.server = private.init()
        self.conn = psycopg2.connect(self.server.dsn)
        self.conn.autocommit = True
        self.enqueue_conn = psycopg2.connect(self.server.dsn)
        self.env = {"JOBRUNNER_PG_DSN": self.server.dsn}

    def _one(self, sql, params=()):
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchone()

    def mark(self, queue):
        """The last msg_id handed out on ``queue`` (its queue made if missing)."""
        self._one("SELECT pgmq.create(%s)", (queue,))
        last, called = self._one(f"SELECT last_value, is_called FROM "
                                 f"pgmq.q_{queue}_msg_id_seq")
        return last if called else last - 1

    def enqueue(self, worker, count, batch=CHUNK):
        _fill(worker, self.enqueue_conn, count, batch, self.enqueue_conn.commit)

    def enqueue_spread(self, workers, count):
        for worker in workers:
            _fill(worker, self.enqueue_conn, count // len(workers), CHUNK,
                  self.enqueue_conn.commit)

    def progress(self, queues, total, mark):
        """Done jobs of the ``total`` enqueued after ``mark`` ({queue: last id before}).

        Polled only once every job is committed (each caller enqueues first), so a queue found
        drained stays drained: later polls leave it out instead of stepping over its dead
        index entries again (200 drained queues, polled every 0.1 s, took a third of a core
        from the drain being timed)."""
        share = total // len(queues)
        drained = set()

        def done():
            left = [q for q in queues if q not in drained]
            if left:
                probe = " UNION ALL ".join(f"SELECT '{q}', {first_id(q)}" for q in left)
                with self.conn.cursor() as cur:
                    cur.execute(probe)
                    firsts = dict(cur.fetchall())
                drained.update(q for q in left if firsts[q] is None)
            return share * len(drained) + sum(firsts[q] - (mark[q] + 1)
                                              for q in left if q not in drained)
        return done

    def drained(self, queue):
        return self._one(f"SELECT {first_id(queue)}")[0] is None

    def memory(self):
        return 0

    def sizes_mb(self, queue):
        """(table with its indexes, the indexes alone) of the queue table, in MB."""
        total, indexes = self._one("SELECT pg_total_relation_size(%s), pg_indexes_size(%s)",
                                   (f"pgmq.q_{queue}",) * 2)
        return total / 1e6, indexes / 1e6

    def calls(self):
        return self._one("SELECT xact_commit FROM pg_stat_database "
                         "WHERE datname = current_database()")[0]

    def close(self):
        self.conn.close()
        self.enqueue_conn.close()
        self.server.destroy()


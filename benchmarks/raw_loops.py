"""Raw-driver drain loops, the yardsticks of the drain benchmarks: no jobrunner code runs here.

Each loop runs in ``processes`` processes forked and connected before the round (untimed, as a
supervisor is started before its round), with the jobs already written. The round starts when
they are let go and ends when they have all exited. On Redis the one-at-a-time loops exit on a
stop mark written behind the jobs (one per process), the batched loop when ``RPOP`` finds the
list empty; on Postgres each loop exits when its claim finds no row.
"""

import multiprocessing

import psycopg2
import redis

from runner import CLAIM_ONE

#: Jobs a batched loop fetches per round trip.
BATCH = 100
#: Popped by a one-at-a-time Redis loop after the last job: it exits.
STOP = b"stop"
#: The batched claim: up to %s rows in one statement.
CLAIM_BATCH = ("DELETE FROM bench_raw WHERE id IN (SELECT id FROM bench_raw ORDER BY id "
               "FOR UPDATE SKIP LOCKED LIMIT %s) RETURNING id, body")


class Loops:
    """``processes`` processes of ``loop(gate, *args)``, forked, connected and waiting at the
    gate when made; ``run`` lets them go and returns when all have exited."""

    def __init__(self, loop, args, processes):
        self.ready = multiprocessing.Barrier(processes + 1)
        self.go = multiprocessing.Event()
        self.workers = [multiprocessing.Process(target=loop, args=((self.ready, self.go), *args))
                        for _ in range(processes)]
        for worker in self.workers:
            worker.start()
        self.ready.wait(60)

    def run(self):
        self.go.set()
        for worker in self.workers:
            worker.join(300)
        codes = [worker.exitcode for worker in self.workers]
        assert codes == [0] * len(codes), f"a raw loop failed or hung: exit codes {codes}"


def _wait_at(gate):
    ready, go = gate
    ready.wait(60)
    go.wait(60)


def fill_redis(client, key, payloads, processes, batched):
    """Untimed: ``payloads`` in the list ``key`` (popped in order), then the stop marks."""
    client.delete(key)
    client.lpush(key, *payloads)
    if not batched:
        client.lpush(key, *([STOP] * processes))


def _brpop_loop(gate, url, key, counter):
    client = redis.Redis.from_url(url)
    client.ping()
    _wait_at(gate)
    while True:
        item = client.brpop(key, timeout=30)
        if item is None or item[1] == STOP:
            return
        if counter:
            client.incr(counter)


def _rpop_batch_loop(gate, url, key, counter):
    client = redis.Redis.from_url(url)
    client.ping()
    _wait_at(gate)
    while True:
        bodies = client.rpop(key, BATCH)
        if not bodies:
            return
        for _ in bodies:
            client.incr(counter)        # the job's own INCR, one round trip each


def redis_loops(url, key, processes, counter=None, batched=False):
    """``BRPOP`` (+ ``INCR counter`` when given) per job, or with ``batched`` ``RPOP key 100``
    then one ``INCR`` per job, in ``processes`` processes until the list is drained."""
    return Loops(_rpop_batch_loop if batched else _brpop_loop, (url, key, counter), processes)


def fill_pg(conn, bodies):
    """Untimed: one committed row of ``bench_raw`` per JSON body."""
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS bench_raw (id bigserial PRIMARY KEY, "
                    "body jsonb); TRUNCATE bench_raw")
        cur.execute("INSERT INTO bench_raw (body) SELECT unnest(%s::jsonb[])", (bodies,))
    conn.commit()


def _pg_loop(gate, dsn, url, counter, batch):
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cur = conn.cursor()
    client = redis.Redis.from_url(url) if counter else None
    if client is not None:
        client.ping()
    _wait_at(gate)
    while True:
        if batch == 1:
            cur.execute(CLAIM_ONE)
        else:
            cur.execute(CLAIM_BATCH, (batch,))
        rows = cur.fetchall()
        if not rows:
            return
        if client is not None:
            for _ in rows:
                client.incr(counter)


def pg_loops(dsn, processes, url=None, counter=None, batched=False):
    """The one-row ``DELETE … FOR UPDATE SKIP LOCKED`` claim per autocommit statement (+ ``INCR
    counter`` when given), or with ``batched`` 100 rows per ``DELETE … RETURNING`` then one
    ``INCR`` per job, in ``processes`` processes until the table is empty."""
    return Loops(_pg_loop, (dsn, url, counter, BATCH if batched else 1), processes)

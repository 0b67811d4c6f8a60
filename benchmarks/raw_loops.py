"""Raw-driver drain loops, the yardsticks of the drain benchmarks: no jobrunner code runs here.

Each loop runs in ``processes`` forked processes, started when the round starts, and the round
ends when they have all exited. On Redis the queue list is full before they start; the
one-at-a-time loops exit on a stop mark pushed behind the jobs (one per process), the batched
loop when ``RPOP`` finds the list empty. On Postgres each loop exits when its claim finds no row.
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


def _run(target, args, processes):
    workers = [multiprocessing.Process(target=target, args=args) for _ in range(processes)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(300)
    codes = [worker.exitcode for worker in workers]
    assert codes == [0] * processes, f"a raw loop failed or hung: exit codes {codes}"


def fill_redis(client, key, payloads, processes, batched):
    """Untimed: ``payloads`` in the list ``key`` (popped in order), then the stop marks."""
    client.delete(key)
    client.lpush(key, *payloads)
    if not batched:
        client.lpush(key, *([STOP] * processes))


def _brpop_loop(url, key, counter):
    client = redis.Redis.from_url(url)
    while True:
        item = client.brpop(key, timeout=30)
        if item is None or item[1] == STOP:
            return
        if counter:
            client.incr(counter)


def _rpop_batch_loop(url, key, counter):
    client = redis.Redis.from_url(url)
    while True:
        bodies = client.rpop(key, BATCH)
        if not bodies:
            return
        for _ in bodies:
            client.incr(counter)        # the job's own INCR, one round trip each


def redis_drain(url, key, processes, counter=None, batched=False):
    """``BRPOP`` (+ ``INCR counter`` when given) per job, or with ``batched`` ``RPOP key 100``
    then one ``INCR`` per job, in ``processes`` processes until the list is drained."""
    loop = _rpop_batch_loop if batched else _brpop_loop
    _run(loop, (url, key, counter), processes)


def fill_pg(conn, bodies):
    """Untimed: one committed row of ``bench_raw`` per JSON body."""
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS bench_raw (id bigserial PRIMARY KEY, "
                    "body jsonb); TRUNCATE bench_raw")
        cur.execute("INSERT INTO bench_raw (body) SELECT unnest(%s::jsonb[])", (bodies,))
    conn.commit()


def _pg_loop(dsn, url, counter, batch):
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cur = conn.cursor()
    client = redis.Redis.from_url(url) if counter else None
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


def pg_drain(dsn, processes, url=None, counter=None, batched=False):
    """The one-row ``DELETE … FOR UPDATE SKIP LOCKED`` claim per autocommit statement (+ ``INCR
    counter`` when given), or with ``batched`` 100 rows per ``DELETE … RETURNING`` then one
    ``INCR`` per job, in ``processes`` processes until the table is empty."""
    _run(_pg_loop, (dsn, url, counter, BATCH if batched else 1), processes)

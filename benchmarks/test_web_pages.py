"""How long each dashboard page takes with big queues: 100,000 waiting jobs and 10,000 dead ones
on each backend (20x and 2x ``JOBRUNNER_BENCH_JOBS``, default 5000; CI's smoke pass uses few).

The jobs are written once per backend: the waiting ones with the enqueuer's batch call, the dead
ones enqueued for later and moved to dead through the operator interface (``kill``). Each page
is then fetched through the app (Flask's test client, so the time is the app's and its
backend's, without a socket) ``ROUNDS`` times; the summary shows p50 / p99 in ms. The target
is under 200 ms a page. ``JOBRUNNER_BENCH_WEB_WAITING`` and ``JOBRUNNER_BENCH_WEB_DEAD`` set the
sizes directly.
"""

import os
import time

import psycopg2
import pytest
import redis

import jobrunner
from jobrunner.web import make_app
from runner import percentile
from tests.conftest import _with_db

JOBS = int(os.environ.get("JOBRUNNER_BENCH_JOBS", "5000"))
WAITING = int(os.environ.get("JOBRUNNER_BENCH_WEB_WAITING", 20 * JOBS))
DEAD = int(os.environ.get("JOBRUNNER_BENCH_WEB_DEAD", 2 * JOBS))
ROUNDS = 20 if JOBS >= 1000 else 3
CHUNK = 5000
#: Dead jobs that share a time of death.
DIED_TOGETHER = 100
QUEUE, DEAD_QUEUE = "bench_web", "bench_web_dead"
#: The pages measured: a name and the path after /<backend>/ (``{dead_id}``: a dead job's id).
PAGES = (("overview", ""), ("queues", "queues"), ("busy", "busy"), ("scheduled", "scheduled"),
         ("retries", "retries"), ("dead", "dead"), ("dead-page-100", "dead?page=100"),
         ("dead-by-worker", "dead?worker=PgWebBench"), ("job", "job?id={dead_id}"),
         ("periodic", "periodic"), ("purge-confirm", f"queues/purge?queue={QUEUE}"))


def _worker(backend, queue):
    enqueuer = jobrunner.PgEnqueuer if backend == "pgmq" else jobrunner.SidekiqEnqueuer
    prefix = "Pg" if backend == "pgmq" else "Redis"
    return type(f"{prefix}WebBench", (jobrunner.Worker,),
                {"enqueuer": enqueuer, "queue": queue, "handle": lambda self, args: None})


def _fill(backend, conn, app):
    """WAITING jobs in QUEUE and DEAD dead ones in DEAD_QUEUE; returns a dead job's id.

    The dead ones die in rounds of ``DIED_TOGETHER`` (enqueued for later, then killed), so they
    have as many times of death as rounds, as jobs that die over a day do."""
    waiting, later = _worker(backend, QUEUE), _worker(backend, DEAD_QUEUE)
    args = {"user_id": 12345, "action": "welcome", "note": "x" * 100}
    commit = conn.commit if backend == "pgmq" else (lambda: None)
    for start in range(0, WAITING, CHUNK):
        waiting.enqueue_batch(conn, [args] * min(CHUNK, WAITING - start))
        commit()                   # the pgmq enqueuer writes in the caller's transaction
    ids = []
    with app.extensions["jobrunner"].backends.inspector(backend) as inspector:
        for start in range(0, DEAD, DIED_TOGETHER):
            ids += [later.enqueue_in(conn, 3600, args)
                    for _ in range(min(DIED_TOGETHER, DEAD - start))]
            commit()
            inspector.job_action("scheduled", "kill", queue=DEAD_QUEUE)
        # Sidekiq's dead set keeps at most 9,999 (``ZREMRANGEBYRANK dead 0 -10000``, as Ruby's
        # DeadSet trims it)
        assert len(inspector.jobs("dead", queue=DEAD_QUEUE)) >= min(DEAD, 9999)
    return ids[len(ids) // 2]


@pytest.fixture(scope="module")
def servers(pg_dsn, redis_server_url):
    redis_url = _with_db(redis_server_url, int(os.environ.get("JOBRUNNER_TEST_REDIS_DB", "0")))
    pg = psycopg2.connect(pg_dsn)
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    app = make_app({"pg_dsn": pg_dsn, "redis_url": redis_url}, basic_auth="")
    made = {"app": app, "conns": {"pgmq": pg, "sidekiq": client}, "dead_ids": {}}
    yield made
    app.extensions["jobrunner"].backends.close()
    pg.rollback()
    pg.autocommit = True
    with pg.cursor() as cur:
        for queue in (QUEUE, DEAD_QUEUE):
            cur.execute("SELECT pgmq.drop_queue(queue_name) FROM pgmq.list_queues() "
                        "WHERE queue_name = %s", (queue,))
    pg.close()
    client.flushdb()
    client.close()


@pytest.fixture(scope="module", params=["pgmq", "sidekiq"])
def filled(request, servers):
    backend = request.param
    started = time.monotonic()
    dead_id = _fill(backend, servers["conns"][backend], servers["app"])
    print(f"\n{backend}: {WAITING} waiting and {DEAD} dead jobs written in "
          f"{time.monotonic() - started:.1f}s")
    return backend, dead_id, servers["app"].test_client()


@pytest.mark.parametrize("page,path", PAGES, ids=[name for name, _ in PAGES])
def test_web_page(benchmark, filled, page, path):
    backend, dead_id, client = filled
    url = f"/{backend}/{path.format(dead_id=dead_id)}"
    assert client.get(url).status_code == 200            # warm: connection, templates
    times = []

    def get():
        started = time.perf_counter()
        response = client.get(url)
        times.append(time.perf_counter() - started)
        assert response.status_code == 200, response.get_data(as_text=True)[-2000:]

    benchmark.group = f"web page time: {backend}, {WAITING} waiting, {DEAD} dead"
    benchmark.pedantic(get, rounds=ROUNDS, iterations=1)
    benchmark.extra_info.update(p50_ms=round(percentile(times, 0.5) * 1000, 2),
                                p99_ms=round(percentile(times, 0.99) * 1000, 2),
                                waiting=WAITING, dead=DEAD)

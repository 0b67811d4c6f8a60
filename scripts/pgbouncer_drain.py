"""Drain rate of a pgmq pool straight to Postgres and through PgBouncer in transaction pooling.

Usage (from the repository root, as root: the private Postgres runs as the ``postgres`` user,
PgBouncer as ``nobody``)::

    python scripts/pgbouncer_drain.py                       # 20,000 jobs, 3 rounds
    python scripts/pgbouncer_drain.py --jobs 5000 --pool-sizes 1 2 20

A private Postgres 15 cluster with pgmq on a free port (``fsync=off``, as in the tests), and for
each pool size a PgBouncer of its own in front of it (``tests/bouncer_support.py``). Each round,
for each path, a supervisor with 2 children of no-op jobs (``scripts/scale_app.py``) is started
and warmed with one job; then ``--jobs`` jobs are enqueued in one transaction. Printed: the time
until the first is read (how soon the idle children noticed), and the drain rate from then until
the queue is empty.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
sys.path[:0] = [os.path.join(ROOT, "tests"), ROOT]

import psycopg2  # noqa: E402

from bouncer_support import PgBouncer  # noqa: E402
from helpers import CliProcess, PrivatePostgres, wait_for  # noqa: E402
from scale_app import workers  # noqa: E402

NOOP = workers("pgmq", queues=0)[0]


def waiting(conn) -> int:
    """Messages left on the queue (a small one: ``count(*)`` is cheap here)."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM pgmq.q_{NOOP.queue}")
        return cur.fetchone()[0]


def drain(direct, via, jobs, log_path, log_level) -> tuple:
    """(seconds until the first of ``jobs`` no-op jobs is read, seconds from then until all are
    read) with 2 children reaching Postgres at ``via``."""
    env = {"JOBRUNNER_PG_DSN": via, "SCALE_BACKEND": "pgmq", "SCALE_QUEUES": "0",
           "JOBRUNNER_LOG_LEVEL": log_level}
    cli = CliProcess(["run", "scale_app:one", "--processes", "2"], env, log_path,
                     app_dir=SCRIPTS)
    conn = psycopg2.connect(direct)
    conn.autocommit = True
    try:
        NOOP.enqueue(conn, {"n": -1})
        wait_for(lambda: waiting(conn) == 0, 60, 0.05, message="the warm-up job:\n"
                 + cli.output()[-2000:])
        NOOP.enqueue_batch(conn, [{"n": n} for n in range(jobs)])
        enqueued = time.monotonic()
        # Through a transaction pooler the idle children hear of the jobs only at their next
        # poll (up to fetch_timeout): timed apart from the drain itself.
        wait_for(lambda: waiting(conn) < jobs, 60, 0.005, message="the first read")
        noticed = time.monotonic()
        wait_for(lambda: waiting(conn) == 0, 600, 0.02, message="the drain")
        return noticed - enqueued, time.monotonic() - noticed
    finally:
        conn.close()
        cli.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pool-sizes", type=int, nargs="+", default=[2, 20],
                        help="PgBouncer default_pool_size values to try")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="jr-bouncer-drain-")
    server = PrivatePostgres(workdir + "/pg").init()
    try:
        setup = psycopg2.connect(server.dsn)
        setup.autocommit = True
        setup.cursor().execute("SELECT pgmq.create(%s)", (NOOP.queue,))
        setup.close()
        for round_ in range(args.rounds):
            report(f"direct, round {round_ + 1}", args.jobs,
                   *drain(server.dsn, server.dsn, args.jobs, f"{workdir}/direct.log",
                          args.log_level))
            for size in args.pool_sizes:
                bouncer = PgBouncer(server.dsn, pool_size=size).start()
                try:
                    took = drain(server.dsn, bouncer.dsn, args.jobs,
                                 f"{workdir}/bouncer{size}.log", args.log_level)
                finally:
                    bouncer.stop()
                report(f"PgBouncer pool {size}, round {round_ + 1}", args.jobs, *took)
    finally:
        server.destroy()
        shutil.rmtree(workdir, ignore_errors=True)


def report(label, jobs, to_notice, seconds):
    print(f"{label}: first read after {to_notice:.2f} s, then {jobs} jobs in {seconds:.2f} s "
          f"= {jobs / seconds:,.0f} jobs/s", flush=True)


if __name__ == "__main__":
    main()

"""Postgres failover under load, repeated: what a supervisor on a multi-host DSN loses, runs
twice and waits through when the primary dies and its standby is promoted.

Usage (from the repository root, as root: the private clusters run as the ``postgres`` user)::

    python scripts/pg_failover.py                          # 3 rounds each: sync, async
    python scripts/pg_failover.py --down 5 --rounds 5      # promote 5 s after the kill
    python scripts/pg_failover.py --modes async --stalled  # the link to the standby hangs first

Each round makes two private Postgres 15 clusters on free ports (a primary with pgmq and a
``pg_basebackup -R`` standby streaming from it, synchronously or not), starts a
``jobrunner run`` of ``tests/apps/failover_app.py`` with ``--processes`` children on the DSN
naming both, and runs ``tests/failover_support.py``'s ``fail_over_under_load``: a web app
enqueues one job per commit, the primary is stopped with ``pg_ctl stop -m immediate``, and the
standby is promoted once a child has been turned away by it as read-only plus ``--down``
seconds (the time a failover tool takes to decide). It prints one line of figures per round
(seconds from the kill until the children noticed, until the promotion, until jobs ran again;
acknowledged jobs lost; extra runs) and the worst of each mode. ``tests/test_pg_failover.py``
runs the short form (``--down 0``, one round). Exit code 1 when a synchronous round lost an
acknowledged job.
"""

import argparse
import os
import pathlib
import sys
import tempfile
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
sys.path[:0] = [TESTS, ROOT]

from failover_support import describe, fail_over_under_load  # noqa: E402
from replication_support import ReplicatedPostgres  # noqa: E402
from supervisor_support import Supervised  # noqa: E402


def one_round(synchronous, stalled, down, processes):
    """The figures of one failover on fresh clusters."""
    workdir = tempfile.mkdtemp(prefix="jr-pgfail-")
    cluster = ReplicatedPostgres(workdir, synchronous).start()
    queue = "pf_" + uuid.uuid4().hex[:10]
    env = {"JOBRUNNER_PG_DSN": cluster.dsn(), "TEST_QUEUE": queue, "JOBRUNNER_LOG_LEVEL": "INFO"}
    sv = Supervised(pathlib.Path(workdir), "failover_app",
                    ["--processes", str(processes), "--timeout-grace", "0.5"], env)
    try:
        sv.wait_workers(processes, 30)
        figures = fail_over_under_load(sv, cluster, queue, stalled, down)
        print(describe(cluster, stalled, figures), flush=True)
        return figures
    finally:
        sv.close()
        cluster.destroy()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="failovers per mode")
    parser.add_argument("--modes", nargs="+", choices=["sync", "async"],
                        default=["sync", "async"])
    parser.add_argument("--down", type=float, default=0.0,
                        help="seconds between the children seeing the standby read-only and "
                             "its promotion")
    parser.add_argument("--stalled", action="store_true",
                        help="hang the replication link just before the kill and commit a "
                             "batch over it")
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    if not ReplicatedPostgres.available():
        parser.error("needs root and /usr/lib/postgresql/15/bin (initdb, pg_ctl, pg_basebackup)")
    sync_lost = 0
    for mode in args.modes:
        rounds = [one_round(mode == "sync", args.stalled, args.down, args.processes)
                  for _ in range(args.rounds)]
        worst = {key: max(r[key] for r in rounds) for key in
                 ("noticed s", "resumed after promotion s", "lost", "duplicates")}
        print(f"{mode}: worst of {len(rounds)} rounds: " + ", ".join(
            f"{key} {value}" for key, value in worst.items()), flush=True)
        if mode == "sync":
            sync_lost = worst["lost"]
    return 1 if sync_lost else 0


if __name__ == "__main__":
    sys.exit(main())

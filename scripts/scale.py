"""Scale figures per backend: a deep backlog, queue size after it, many queues, idle supervisors.

Usage (from the repository root, as root: the private Postgres runs as the ``postgres`` user)::

    python scripts/scale.py                      # the full sizes (10-20 minutes)
    python scripts/scale.py --backends sidekiq --jobs 200000
    python scripts/scale.py --jobs 20000 --deep-sample 5000 --shallow 5000 --queue-jobs 5000 \\
        --queues 5 --idle-supervisors 1 --idle-seconds 2     # the suite's short form

Each backend gets a private server on a free port, in a temporary folder (a Postgres 15
cluster with pgmq, or a redis-server without persistence, like the shared one); the shared
servers are never touched. Jobs are no-ops (``scripts/scale_app.py``); supervisors run with 2
children and default settings. Measured, per backend:

- ``enqueue``: ``--jobs`` jobs with ``enqueue_batch``, 1,000 per call (one commit per call on
  pgmq); jobs/s.
- ``deep``: the drain rate over ``--deep-sample`` jobs taken from the full backlog (after the
  first 10% of the sample, to leave out the start), and ``shallow``: the rate from 10% to 90%
  of a ``--shallow``-job queue (median of 3). Their ratio is the goal's "1M deep vs 10k deep".
- pgmq: the queue table's size with its indexes after the backlog drained, and the deep rate of
  a second backlog of the same size. Redis: ``used_memory`` per waiting job.
- ``many queues``: ``--queue-jobs`` jobs spread over ``--queues`` queues served by one pool,
  against the same jobs on one queue, each timed from 10% to 90% done.
- ``idle``: ``--idle-supervisors`` supervisors doing nothing for ``--idle-seconds``, first
  with 2 children each, then with 4: commands (Redis, as ``INFO`` counts them: each command of
  a pipeline counts) or committed transactions (Postgres) and CPU seconds of every jobrunner
  process. The difference between the two is the cost of an idle child; the rest is the
  supervisor's own (its housekeeper), whatever its size. ``scripts/idle_cost.py`` counts the
  requests (round trips) of one idle child instead.

Every backlog (both deep ones, and the jobs of the many-queue runs) is enqueued while no pool
runs, and a pool started on it drains it; a shallow queue is enqueued in one call, which makes
it visible at once, to a pool already up. A rate is refused when its two polls frame less than
half the span it was asked to time.

Progress is read without scanning: ``LLEN`` plus the in-flight lists on Redis, and on pgmq the
lowest ``msg_id`` left (messages are taken in id order), never ``count(*)``, which reads the
whole heap and would take a core from the drain it measures.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
sys.path[:0] = [os.path.join(ROOT, "tests"), ROOT]

from helpers import CliProcess, PrivatePostgres, PrivateRedis, child_pids, wait_for  # noqa: E402
from scale_app import workers  # noqa: E402
from scale_server import PgmqServer, RedisServer  # noqa: E402

PROCESSES = 2


class Pool:
    """One ``jobrunner run scale_app:<registry>`` with 2 children."""

    def __init__(self, server, registry, workdir, name, queues, processes=PROCESSES):
        env = dict(server.env, SCALE_BACKEND=server.backend, SCALE_QUEUES=str(queues))
        self.processes = processes
        self.cli = CliProcess(["run", f"scale_app:{registry}", "--processes", str(processes)],
                              env, os.path.join(workdir, f"{name}.log"), app_dir=SCRIPTS)

    def wait_up(self):
        wait_for(lambda: len(child_pids(self.cli.pid)) >= self.processes + 1, 60, 0.05,
                 message="the supervisor's children:\n" + self.cli.output()[-2000:])

    def pids(self):
        return [self.cli.pid, *child_pids(self.cli.pid)]

    def stop(self):
        self.cli.stop()


def rate_between(progress, total, first, last, timeout, interval=0.01):
    """Jobs/s between ``first`` and ``last`` jobs done of ``total``, polled from ``progress``:
    the jobs done between the first poll past ``first`` and the first poll past ``last``."""
    def reading(at_least):
        done = wait_for(lambda: (lambda d: d if d >= at_least else None)(progress()),
                        timeout, interval, message=f"{at_least} of {total} done")
        return done, time.perf_counter()
    (done_from, since), (done_to, until) = reading(first), reading(last)
    # The polls must frame most of the span asked for: a first poll already near ``last``
    # means the jobs went before they could be timed (say, drained while still enqueued).
    if (done_to - done_from) * 2 < last - first:
        raise SystemExit(f"{total} jobs: only {done_to - done_from} drained between the polls "
                         f"past {first} and {last}: too few to time")
    return (done_to - done_from) / (until - since)


def timed_enqueue(server, worker, count):
    started = time.perf_counter()
    server.enqueue(worker, count)
    return count / (time.perf_counter() - started)


def deep_and_shallow(server, args, workdir, found):
    backend = server.backend
    Noop, _ = workers(backend)
    before, mark = server.memory(), server.mark("scale")
    found[f"{backend} enqueue jobs/s"] = timed_enqueue(server, Noop, args.jobs)
    if backend == "sidekiq":
        found["sidekiq bytes per waiting job"] = (server.memory() - before) / args.jobs
        found["sidekiq payload bytes"] = server.payload_size("scale")
    found[f"{backend} deep jobs/s"] = drain_backlog(server, args, workdir, mark, "deep")
    if backend == "pgmq":
        record_sizes(server, found, "after the backlog")
        # Enqueued, as the first, with no pool running: one draining it as it fills would
        # time a queue that never got deep, and one keeping up would leave nothing to time.
        mark = server.mark("scale")
        server.enqueue(Noop, args.jobs)
        found["pgmq second deep jobs/s"] = drain_backlog(server, args, workdir, mark, "second")
        record_sizes(server, found, "after the second")
    pool = Pool(server, "one", workdir, f"{backend}-shallow", 1)
    try:
        pool.wait_up()
        rates = []
        for _ in range(3):
            progress = server.progress(["scale"], args.shallow, {"scale": server.mark("scale")})
            # One call: the whole queue appears at once (one commit, one LPUSH) to a warm pool.
            server.enqueue(Noop, args.shallow, batch=args.shallow)
            rates.append(rate_between(progress, args.shallow, args.shallow // 10,
                                      args.shallow * 9 // 10, args.timeout))
            wait_for(lambda: server.drained("scale"), args.timeout, 0.05, message="drained")
        found[f"{backend} shallow jobs/s"] = statistics.median(rates)
    finally:
        pool.stop()


def drain_backlog(server, args, workdir, mark, name):
    """The rate over ``--deep-sample`` jobs from the top of a waiting backlog, taken by a pool
    started on it (its start-up falls in the first 10% of the sample, left out); then the
    rest drained."""
    progress = server.progress(["scale"], args.jobs, {"scale": mark})
    pool = Pool(server, "one", workdir, f"{server.backend}-{name}", 1)
    try:
        skip = args.deep_sample // 10
        rate = rate_between(progress, args.jobs, skip, skip + args.deep_sample, args.timeout)
        wait_for(lambda: server.drained("scale"), args.timeout, 0.1,
                 message="the backlog drained")
    finally:
        pool.stop()
    return rate


def record_sizes(server, found, when):
    total, indexes = server.sizes_mb("scale")
    found[f"pgmq queue table MB {when}"] = total
    found[f"pgmq queue indexes MB {when}"] = indexes


def many_queues(server, args, workdir, found):
    backend = server.backend
    Noop, MANY = workers(backend, args.queues)
    for label, registry, senders, queues in (("one queue", "one", [Noop], ["scale"]),
                                             ("many queues", "many", MANY[:args.queues],
                                              [w.queue for w in MANY[:args.queues]])):
        # Every job waits before the pool starts, as in the deep backlog: a pool draining
        # them while they are enqueued would time the enqueue (on pgmq, a queue not yet
        # filled reads as drained).
        marks = {q: server.mark(q) for q in queues}
        progress = server.progress(queues, args.queue_jobs, marks)
        server.enqueue_spread(senders, args.queue_jobs)
        pool = Pool(server, registry, workdir, f"{backend}-{registry}", args.queues)
        try:
            # Polled every 0.1 s: one probe reads every queue.
            found[f"{backend} {label} jobs/s"] = rate_between(
                progress, args.queue_jobs, args.queue_jobs // 10, args.queue_jobs * 9 // 10,
                args.timeout, interval=0.1)
            wait_for(lambda: all(server.drained(q) for q in queues), args.timeout, 0.1,
                     message="every queue drained")
        finally:
            pool.stop()


def idle_cost(server, args, workdir, found):
    """Idle supervisors with 2 children, then with 4: the difference is what the children
    cost, the rest what each supervisor (its housekeeper) costs whatever its size."""
    backend = server.backend
    (calls_2, cpu_2), (calls_4, cpu_4) = (idle_phase(server, args, workdir, n) for n in (2, 4))
    supervisors = args.idle_supervisors
    child_calls, child_cpu = (calls_4 - calls_2) / (2 * supervisors), (cpu_4 - cpu_2) / (
        2 * supervisors)
    found[f"{backend} idle server calls/s per child"] = child_calls
    found[f"{backend} idle CPU ms/s per child"] = child_cpu
    found[f"{backend} idle server calls/s per supervisor, children aside"] = (
        calls_2 / supervisors - 2 * child_calls)
    found[f"{backend} idle CPU ms/s per supervisor, children aside"] = (
        cpu_2 / supervisors - 2 * child_cpu)


def idle_phase(server, args, workdir, processes):
    """(server calls per second, CPU ms per second) of ``--idle-supervisors`` idle ones."""
    pools = [Pool(server, "one", workdir, f"{server.backend}-idle{processes}-{n}", 1, processes)
             for n in range(args.idle_supervisors)]
    try:
        for pool in pools:
            pool.wait_up()
        wait_for(lambda: server.drained("scale"), args.timeout, 0.1, message="an empty queue")
        time.sleep(2.0)     # past start-up: the first beats, registrations and queue checks
        pids = [pid for pool in pools for pid in pool.pids()]
        calls, cpu, started = server.calls(), cpu_seconds(pids), time.perf_counter()
        time.sleep(args.idle_seconds)
        seconds = time.perf_counter() - started
        return ((server.calls() - calls - 1) / seconds,
                (cpu_seconds(pids) - cpu) * 1000 / seconds)
    finally:
        for pool in pools:
            pool.stop()


def cpu_seconds(pids):
    """utime + stime of ``pids`` (the processes still alive), in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


GOALS = [
    ("deep", "shallow", 0.8, "drain at depth vs a shallow queue"),
    ("many queues", "one queue", 0.8, "many queues vs one queue"),
]


def summary(found, backends):
    lines = [f"{name:<45} {value:>12,.1f}" for name, value in found.items()]
    for backend in backends:
        for top, bottom, goal, what in GOALS:
            a, b = found.get(f"{backend} {top} jobs/s"), found.get(f"{backend} {bottom} jobs/s")
            if a and b:
                lines.append(f"{backend} {what}: {a / b:.2f}x (goal >= {goal}x: "
                             f"{'met' if a / b >= goal else 'missed'})")
        calls = found.get(f"{backend} idle server calls/s per child")
        if calls is not None:
            # Commands, not round trips, on Redis: each command of a pipeline counts.
            lines.append(f"{backend} idle child: {calls:.2f} server calls/s ("
                         f"{'transactions' if backend == 'pgmq' else 'commands'}; requests per "
                         f"second, the goal's round trips: scripts/idle_cost.py)")
    second = found.get("pgmq second deep jobs/s")
    if second and found.get("pgmq deep jobs/s"):
        lines.append(f"pgmq second backlog vs first: {second / found['pgmq deep jobs/s']:.2f}x")
    return "\n".join(lines)


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="pgmq,sidekiq")
    parser.add_argument("--jobs", type=int, default=1_000_000, help="the backlog")
    parser.add_argument("--deep-sample", type=int, default=100_000)
    parser.add_argument("--shallow", type=int, default=10_000)
    parser.add_argument("--queue-jobs", type=int, default=100_000)
    parser.add_argument("--queues", type=int, default=200)
    parser.add_argument("--idle-supervisors", type=int, default=20)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    if not 1 <= args.queues <= 200 or args.deep_sample * 1.1 > args.jobs \
            or args.queue_jobs % args.queues:
        parser.error("--queues must be 1-200 and divide --queue-jobs, and --deep-sample be at "
                     "most --jobs / 1.1")
    return args


def main(argv=None):
    args = parse(argv)
    backends = args.backends.split(",")
    found = {}
    workdir = tempfile.mkdtemp(prefix="jr-scale-")
    try:
        for backend in backends:
            server = (PgmqServer(PrivatePostgres.in_new_folder("jr-scale-pg-"))
                      if backend == "pgmq" else RedisServer(PrivateRedis(workdir + "/redis")))
            try:
                deep_and_shallow(server, args, workdir, found)
                many_queues(server, args, workdir, found)
                idle_cost(server, args, workdir, found)
            finally:
                server.close()
            print(summary({k: v for k, v in found.items() if k.startswith(backend)},
                          [backend]), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\nsummary\n" + summary(found, backends))
    return 0


if __name__ == "__main__":
    sys.exit(main())

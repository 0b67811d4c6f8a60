"""Soak test: N jobs per backend through 2 supervisors while children are killed and the server
restarts; prints completed / lost / duplicated per backend.

Usage (from the repository root, as root: the private Postgres runs as the ``postgres`` user)::

    python scripts/soak.py                       # 20,000 jobs on pgmq and on sidekiq
    python scripts/soak.py --jobs 2000 --backends sidekiq --kills-per-second 2
    python scripts/soak.py --restarts 3 --timeout 300 --processes 4

For each backend it starts a private server on a free port (``redis-server`` with AOF on, or a
Postgres 15 cluster with pgmq, in a temporary directory; the shared servers are never touched),
enqueues ``--jobs`` jobs of ``tests/apps/fault_app.py``'s ``Record`` worker, starts two
``jobrunner run`` supervisors with ``--processes`` children each, and then, until every job has
run or ``--timeout`` seconds pass: SIGKILLs a random busy-or-idle worker child about
``--kills-per-second`` times a second, and restarts the server ``--restarts`` times, spread
over the run (at 20 %, 45 %, 70 % ... of the jobs done). It waits until the queues are empty,
stops the supervisors with TERM and prints one line per backend::

    pgmq     jobs=20000 completed=20000 lost=0 duplicated=12 kills=41 restarts=2 seconds=38.1

``lost`` counts job ids that never ran (must be 0: delivery is at least once); ``duplicated``
counts extra runs (allowed after a fault). Exit code 0 when nothing was lost on any backend,
1 otherwise (or on timeout).
"""

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
sys.path[:0] = [TESTS, ROOT]

from helpers import PrivatePostgres, PrivateRedis, alive, child_pids  # noqa: E402


def title(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def read_runs(path):
    counts = {}
    try:
        with open(path) as handle:
            for line in handle:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "ran" and parts[1].isdigit():
                    counts[int(parts[1])] = counts.get(int(parts[1]), 0) + 1
    except FileNotFoundError:
        pass
    return counts


class Server:
    """The private server of one backend, with how to enqueue to it and see it drained."""

    def __init__(self, backend, workdir):
        self.backend = backend
        if backend == "pgmq":
            self.server = PrivatePostgres(tempfile.mkdtemp(prefix="jr-soak-") + "/pg").init()
            self.env = {"JOBRUNNER_PG_DSN": self.server.dsn}
        else:
            self.server = PrivateRedis(os.path.join(workdir, "redis")).start()
            self.env = {"JOBRUNNER_REDIS_URL": self.server.url}

    def enqueue(self, worker, count, batch=1000):
        if self.backend == "pgmq":
            import psycopg2
            conn = psycopg2.connect(self.server.dsn)
        else:
            import redis
            conn = redis.Redis.from_url(self.server.url)
        try:
            for start in range(0, count, batch):
                worker.enqueue_batch(conn, [{"n": n} for n in range(start,
                                                                    min(count, start + batch))])
                if self.backend == "pgmq":
                    conn.commit()
        finally:
            conn.close()

    def drained(self, queue):
        try:
            if self.backend == "pgmq":
                import psycopg2
                conn = psycopg2.connect(self.server.dsn, connect_timeout=2)
                with conn.cursor() as cur:
                    cur.execute(f'SELECT count(*) FROM pgmq."q_{queue}"')
                    left = cur.fetchone()[0]
                conn.close()
                return left == 0
            import redis
            r = redis.Redis.from_url(self.server.url, socket_connect_timeout=2)
            try:
                return (r.llen(f"queue:{queue}") == 0 and r.zcard("retry") == 0
                        and not any(r.llen(k) for k in r.scan_iter("jobrunner:inflight:*")))
            finally:
                r.close()
        except Exception:
            return False

    def restart(self):
        self.server.restart(down_for=1.0)

    def close(self):
        if self.backend == "pgmq":
            self.server.destroy()
        else:
            self.server.stop()


def soak(backend, args, workdir):
    import jobrunner
    queue = f"soak_{backend}"
    enqueuer = jobrunner.PgEnqueuer if backend == "pgmq" else jobrunner.SidekiqEnqueuer
    sender = type("Record", (jobrunner.Worker,), {"enqueuer": enqueuer, "queue": queue,
                                                  "handle": lambda self, a: None})
    out = os.path.join(workdir, f"{backend}.out")
    server = Server(backend, workdir)
    supervisors = []
    started = time.monotonic()
    kills = restarts = 0
    try:
        server.enqueue(sender, args.jobs)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, ROOT]), TEST_BACKEND=backend,
                   TEST_QUEUE=queue, FAULT_FAST="1", FAULT_OUT=out, JOBRUNNER_LOG_LEVEL="WARNING",
                   **server.env)
        for i in range(2):
            log = open(os.path.join(workdir, f"{backend}.sv{i}.log"), "w")
            supervisors.append(subprocess.Popen(
                [sys.executable, "-m", "jobrunner", "run", "apps.fault_app:registry",
                 "--processes", str(args.processes), "--timeout-grace", "0.5"],
                env=env, cwd=TESTS, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True))
        marks = [(i + 1) / (args.restarts + 1) * 0.9 for i in range(args.restarts)]
        deadline = started + args.timeout
        next_kill = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            runs = read_runs(out)
            if len(runs) >= args.jobs and server.drained(queue):
                break
            if marks and len(runs) >= marks[0] * args.jobs:
                marks.pop(0)
                server.restart()
                restarts += 1
            if args.kills_per_second and time.monotonic() >= next_kill:
                next_kill = time.monotonic() + random.expovariate(args.kills_per_second)
                workers = [pid for sv in supervisors for pid in child_pids(sv.pid)
                           if alive(pid) and "housekeeper" not in title(pid)
                           and "jobrunner" in title(pid)]
                if workers:
                    try:
                        os.kill(random.choice(workers), signal.SIGKILL)
                        kills += 1
                    except ProcessLookupError:
                        pass
            for sv in supervisors:
                if sv.poll() is not None:
                    print(f"{backend}: a supervisor exited with {sv.returncode}", file=sys.stderr)
            time.sleep(0.2)
    finally:
        for sv in supervisors:
            if sv.poll() is None:
                sv.send_signal(signal.SIGTERM)
        for sv in supervisors:
            try:
                sv.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(sv.pid, signal.SIGKILL)
                sv.wait()
        server.close()
    runs = read_runs(out)
    completed = sum(1 for n in range(args.jobs) if n in runs)
    duplicated = sum(count - 1 for count in runs.values())
    lost = args.jobs - completed
    print(f"{backend:8} jobs={args.jobs} completed={completed} lost={lost} "
          f"duplicated={duplicated} kills={kills} restarts={restarts} "
          f"seconds={time.monotonic() - started:.1f}", flush=True)
    return lost == 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20000, help="jobs per backend")
    parser.add_argument("--backends", default="pgmq,sidekiq")
    parser.add_argument("--processes", type=int, default=3, help="children per supervisor")
    parser.add_argument("--kills-per-second", type=float, default=1.0)
    parser.add_argument("--restarts", type=int, default=2, help="server restarts per backend")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per backend")
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="jobrunner-soak-")
    print(f"soak: {args.jobs} jobs per backend, logs in {workdir}", flush=True)
    ok = True
    for backend in args.backends.split(","):
        ok = soak(backend.strip(), args, workdir) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

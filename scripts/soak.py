"""Soak test: N jobs per backend through 2 supervisors while children are killed or frozen, the
network hangs and the server restarts; prints completed / lost / duplicated / dead per backend.

Usage (from the repository root, as root: the private Postgres runs as the ``postgres`` user)::

    python scripts/soak.py                       # 20,000 jobs on pgmq and on sidekiq
    python scripts/soak.py --jobs 2000 --backends sidekiq --kills-per-second 2
    python scripts/soak.py --restarts 3 --timeout 300 --processes 4
    python scripts/soak.py --freezes 6 --hangs 2 --hang-seconds 12

For each backend it starts a private server on a free port (``redis-server`` with AOF on, or a
Postgres 15 cluster with pgmq, in a temporary directory; the shared servers are never touched),
enqueues ``--jobs`` jobs of ``tests/apps/fault_app.py``'s ``Record`` worker (each runs ``--job-seconds``), starts two
``jobrunner run`` supervisors with ``--processes`` children each, and then, until every job has
run or ``--timeout`` seconds pass: SIGKILLs a random busy-or-idle worker child about
``--kills-per-second`` times a second, and spreads over the run (by the share of jobs done)
``--restarts`` server restarts, ``--freezes`` freezes (SIGSTOP for ``--freeze-seconds``, past the
supervisors' 3 s heartbeat limit: in turn a worker child, a housekeeper, and a whole supervisor
with its children, as a paused VM) and ``--hangs`` network hangs (the supervisors reach the
server through a TCP proxy in this process, which stops forwarding for ``--hang-seconds``
without closing anything, then delivers what it held, late). It waits until the queues are
empty, stops the supervisors with TERM and prints one line per backend::

    pgmq     jobs=20000 completed=20000 lost=0 duplicated=12 dead=0 kills=41 restarts=2 ...

``lost`` counts job ids that never ran (must be 0: delivery is at least once); ``duplicated``
counts extra runs (allowed after a fault); ``dead`` counts dead jobs (must be 0: the jobs never
fail, and each may be charged 25 crashed runs before it dies). Exit code 0 when nothing was lost
or dead on any backend, 1 otherwise (or on timeout).
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
from proxy import TcpProxy  # noqa: E402


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
            self.server = PrivatePostgres.in_new_folder("jr-soak-").init()
            port = self.server.port
        else:
            self.server = PrivateRedis(os.path.join(workdir, "redis")).start()
            port = self.server.port
        # The supervisors go through the proxy (hangs); enqueueing and checks go direct.
        self.proxy = TcpProxy(("127.0.0.1", port))
        self.proxy.start()
        if backend == "pgmq":
            self.env = {"JOBRUNNER_PG_DSN": self.server.dsn.replace(
                f":{port}/", f":{self.proxy.port}/")}
        else:
            self.env = {"JOBRUNNER_REDIS_URL": self.server.url.replace(
                f":{port}/", f":{self.proxy.port}/")}

    def enqueue(self, worker, count, seconds=0.0, batch=1000):
        if self.backend == "pgmq":
            import psycopg2
            conn = psycopg2.connect(self.server.dsn)
        else:
            import redis
            conn = redis.Redis.from_url(self.server.url)
        try:
            for start in range(0, count, batch):
                worker.enqueue_batch(conn, [{"n": n, "seconds": seconds} for n in
                                            range(start, min(count, start + batch))])
                if self.backend == "pgmq":
                    conn.commit()
        finally:
            conn.close()

    def dead(self, queue):
        """How many jobs are dead (the archive on pgmq, Sidekiq's dead set)."""
        if self.backend == "pgmq":
            import psycopg2
            conn = psycopg2.connect(self.server.dsn, connect_timeout=2)
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM pgmq.meta WHERE queue_name = %s", (queue,))
                if not cur.fetchone()[0]:
                    return 0
                cur.execute(f'SELECT count(*) FROM pgmq."a_{queue}"')
                count = cur.fetchone()[0]
            conn.close()
            return count
        import redis
        r = redis.Redis.from_url(self.server.url, socket_connect_timeout=2)
        try:
            return r.zcard("dead")
        finally:
            r.close()

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
        self.proxy.close()
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
    kills = restarts = freezes = hangs = 0
    frozen = []                   # (thaw at, pids) of what is stopped now
    hung_until = None
    exited = []
    try:
        server.enqueue(sender, args.jobs, args.job_seconds)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, ROOT]), TEST_BACKEND=backend,
                   TEST_QUEUE=queue, FAULT_FAST="1", FAULT_OUT=out, JOBRUNNER_LOG_LEVEL="WARNING",
                   **server.env)
        for i in range(2):
            log = open(os.path.join(workdir, f"{backend}.sv{i}.log"), "w")
            supervisors.append(subprocess.Popen(
                [sys.executable, "-m", "jobrunner", "run", "apps.fault_app:registry",
                 "--processes", str(args.processes), "--timeout-grace", "0.5",
                 "--heartbeat-timeout", "3"],
                env=env, cwd=TESTS, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True))
        marks = spread("restart", args.restarts) + spread("freeze", args.freezes) \
            + spread("hang", args.hangs)
        marks.sort()
        deadline = started + args.timeout
        next_kill = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            runs = read_runs(out)
            if len(runs) >= args.jobs and server.drained(queue):
                break
            now = time.monotonic()
            for thaw_at, pids in [f for f in frozen if f[0] <= now]:
                frozen.remove((thaw_at, pids))
                signal_all(pids, signal.SIGCONT)
            if hung_until is not None and now >= hung_until:
                server.proxy.release()
                hung_until = None
            if marks and len(runs) >= marks[0][0] * args.jobs:
                _, fault = marks.pop(0)
                if fault == "restart":
                    server.restart()
                    restarts += 1
                elif fault == "hang" and hung_until is None:
                    server.proxy.hang()
                    hung_until = now + args.hang_seconds
                    hangs += 1
                elif fault == "freeze":
                    pids = freeze_target(supervisors, freezes)
                    if pids:
                        signal_all(pids, signal.SIGSTOP)
                        frozen.append((now + args.freeze_seconds, pids))
                        freezes += 1
            if args.kills_per_second and time.monotonic() >= next_kill:
                next_kill = time.monotonic() + random.expovariate(args.kills_per_second)
                # Children past their start: a child killed while it connects is a crash
                # at start, and five in a row rightly make a supervisor give up.
                workers = [pid for sv in supervisors for pid in child_pids(sv.pid)
                           if alive(pid) and "housekeeper" not in title(pid)
                           and "jobrunner" in title(pid) and "connecting" not in title(pid)]
                if workers:
                    try:
                        os.kill(random.choice(workers), signal.SIGKILL)
                        kills += 1
                    except ProcessLookupError:
                        pass
            for sv in supervisors:
                if sv.poll() is not None and sv not in exited:
                    exited.append(sv)
                    print(f"{backend}: a supervisor exited with {sv.returncode}", file=sys.stderr)
            time.sleep(0.2)
    finally:
        for _, pids in frozen:
            signal_all(pids, signal.SIGCONT)
        if hung_until is not None:
            server.proxy.release()
        dead = server.dead(queue)
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
          f"duplicated={duplicated} dead={dead} kills={kills} restarts={restarts} "
          f"freezes={freezes} hangs={hangs} seconds={time.monotonic() - started:.1f}",
          flush=True)
    return lost == 0 and dead == 0 and not exited


def spread(fault, count):
    """``count`` marks (share of the jobs done, fault) spread over the run."""
    return [((i + 1) / (count + 1) * 0.9, fault) for i in range(count)]


def freeze_target(supervisors, turn):
    """The processes to freeze, in turn: a worker child, a housekeeper, a whole supervisor."""
    live = [sv for sv in supervisors if sv.poll() is None]
    if not live:
        return []
    sv = random.choice(live)
    kids = [pid for pid in child_pids(sv.pid) if alive(pid) and "jobrunner" in title(pid)]
    if turn % 3 == 2:
        return [sv.pid] + kids
    wanted = [pid for pid in kids if ("housekeeper" in title(pid)) == (turn % 3 == 1)]
    return [random.choice(wanted)] if wanted else []


def signal_all(pids, sig):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20000, help="jobs per backend")
    parser.add_argument("--backends", default="pgmq,sidekiq")
    parser.add_argument("--processes", type=int, default=3, help="children per supervisor")
    parser.add_argument("--job-seconds", type=float, default=0.02,
                        help="how long each job runs: long enough for the faults to land")
    parser.add_argument("--kills-per-second", type=float, default=1.0)
    parser.add_argument("--restarts", type=int, default=2, help="server restarts per backend")
    parser.add_argument("--freezes", type=int, default=3, help="SIGSTOPs per backend")
    parser.add_argument("--freeze-seconds", type=float, default=6.0)
    parser.add_argument("--hangs", type=int, default=1, help="network hangs per backend")
    parser.add_argument("--hang-seconds", type=float, default=10.0)
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

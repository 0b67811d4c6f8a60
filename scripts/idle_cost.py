"""What an idle child costs: its round trips to the server per second, counted with strace.

Usage (from the repository root, as root; needs ``strace``)::

    python scripts/idle_cost.py                     # both backends, 1 and 200 queues, 20 s
    python scripts/idle_cost.py --backends pgmq --queues 1 --seconds 10

Each backend gets a private server (as ``scripts/scale.py`` does). One supervisor with 2
children serves an empty queue (or ``--queues`` empty queues); once it is up, strace counts
the ``sendto``/``sendmsg`` calls each child (the housekeeper aside) makes on its TCP socket for
``--seconds``. Each is one request sent to the server: a statement on Postgres, a command or a
pipeline on Redis (a pipeline is sent in one call). Writes to the supervisor's pipe are not
counted. CPU is read from ``/proc``.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "scripts"), os.path.join(ROOT, "tests"), ROOT]

from helpers import PrivatePostgres, PrivateRedis, child_pids  # noqa: E402
from scale import Pool, cpu_seconds  # noqa: E402
from scale_server import PgmqServer, RedisServer  # noqa: E402

def sends_of(pid, seconds):
    """How many requests process ``pid`` sent to a TCP peer (the server) in ``seconds``;
    ``-yy`` names each descriptor, which tells the server's socket from the pipe's."""
    out = subprocess.run(["timeout", "-s", "INT", str(seconds), "strace", "-q", "-yy", "-s", "0",
                          "-e", "trace=sendto,sendmsg", "-p", str(pid)],
                         capture_output=True, text=True).stderr
    return sum(1 for line in out.splitlines() if re.match(r"send(to|msg)\(\d+<TCP", line))


def title_of(pid):
    with open(f"/proc/{pid}/cmdline") as handle:
        return handle.read().replace("\0", " ").strip()


def measure(server, queues, seconds, workdir):
    registry = "one" if queues == 1 else "many"
    pool = Pool(server, registry, workdir, f"{server.backend}-idle-{queues}", queues)
    try:
        pool.wait_up()
        time.sleep(3.0)           # past start-up: first beats, registrations, queue checks
        children = [pid for pid in child_pids(pool.cli.pid)
                    if "housekeeper" not in title_of(pid)]
        cpu = cpu_seconds(children)
        tracers = [subprocess.Popen([sys.executable, __file__, "--trace", str(pid),
                                     "--seconds", str(seconds)], stdout=subprocess.PIPE,
                                    text=True) for pid in children]
        counts = [int(tracer.communicate()[0]) for tracer in tracers]
        cpu_ms = (cpu_seconds(children) - cpu) * 1000 / seconds / len(children)
        return [count / seconds for count in counts], cpu_ms
    finally:
        pool.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="pgmq,sidekiq")
    parser.add_argument("--queues", default="1,200")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--trace", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.trace:
        print(sends_of(args.trace, args.seconds))
        return 0
    workdir = tempfile.mkdtemp(prefix="jr-idle-")
    try:
        for backend in args.backends.split(","):
            server = (PgmqServer(PrivatePostgres.in_new_folder("jr-idle-pg-"))
                      if backend == "pgmq" else RedisServer(PrivateRedis(workdir + "/redis")))
            try:
                for queues in (int(q) for q in args.queues.split(",")):
                    rates, cpu_ms = measure(server, queues, args.seconds, workdir)
                    print(f"{backend}, {queues} queue(s): requests/s per idle child "
                          f"{', '.join(f'{r:.2f}' for r in rates)}; "
                          f"CPU {cpu_ms:.2f} ms/s per child", flush=True)
            finally:
                server.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

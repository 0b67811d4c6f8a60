"""Running the real `jobrunner run` under test: one supervisor per test, cleaned up after.

Every wait is on an event (a line in the job output file, a log line, a process state, a key)
with a deadline; the only fixed waits are the observation windows of tests that assert that
something does *not* happen, and they say so.
"""

import collections
import os
import signal
import time

import pytest

from helpers import CliProcess, alive, child_pids, read_lines, wait_for


def cmdline(pid):
    """The process title (setproctitle writes it to /proc/<pid>/cmdline)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def group_members(pgid):
    """Live (non-zombie) processes in process group ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


class Supervised:
    """One `python -m jobrunner run APP:registry ...` with its output file and log."""

    def __init__(self, tmp_path, app, args, env, name="sv", wrapper=()):
        self.out = str(tmp_path / f"{name}.out")
        self.mw = self.out + ".mw"
        self.env = dict(env, TEST_OUT=self.out)
        self.cli = CliProcess(["run", f"apps.{app}:registry", *args], self.env,
                              str(tmp_path / f"{name}.log"), wrapper=wrapper)

    @property
    def pid(self):
        return self.cli.pid

    def log(self):
        return self.cli.output()

    def lines(self, kind=None):
        """Output lines split into fields, optionally only those starting with ``kind``."""
        rows = [line.split() for line in read_lines(self.out)]
        return [r for r in rows if kind is None or r[0] == kind]

    def middleware_lines(self):
        return [line.split() for line in read_lines(self.mw)]

    def ran(self, kind="ran"):
        """Multiset of the ``n`` of each output line of ``kind``."""
        return collections.Counter(int(r[1]) if r[1].isdigit() else r[1]
                                   for r in self.lines(kind))

    def wait_lines(self, kind, count, timeout=15.0):
        wait_for(lambda: len(self.lines(kind)) >= count, timeout,
                 message=f"{count} {kind!r} lines; log:\n{self.log()[-3000:]}")
        return self.lines(kind)

    def wait_log(self, text, timeout=15.0):
        self.cli.wait_for_log(text, timeout)

    def signal(self, sig):
        self.cli.signal(sig)

    def wait_exit(self, timeout=20.0):
        return self.cli.wait(timeout)

    def children(self):
        """{pid: title} of the supervisor's live children."""
        return {pid: cmdline(pid) for pid in child_pids(self.pid) if alive(pid)}

    def workers(self):
        """PIDs of the worker children (not the housekeepers)."""
        return sorted(pid for pid, title in self.children().items()
                      if title and "housekeeper" not in title)

    def housekeepers(self):
        return sorted(pid for pid, title in self.children().items() if "housekeeper" in title)

    def wait_workers(self, count, timeout=10.0, titled=None):
        """Wait until exactly ``count`` workers are up (all with ``titled`` in their title)."""
        def ready():
            kids = {pid: title for pid, title in self.children().items()
                    if title and "housekeeper" not in title}
            if len(kids) != count:
                return None
            if titled and not all(titled in title for title in kids.values()):
                return None
            if any(title.startswith("python") for title in kids.values()):
                return None             # forked but not yet titled
            return sorted(kids)
        return wait_for(ready, timeout, message=f"{count} workers ({titled or 'any'}); "
                        f"children {self.children()}; log:\n{self.log()[-2000:]}")

    def close(self):
        """Stop it if it still runs, then make sure nothing of its process group is left."""
        try:
            if self.cli.proc.poll() is None:
                self.cli.proc.send_signal(signal.SIGTERM)
                try:
                    self.cli.proc.wait(10)
                except Exception:
                    pass
        finally:
            leftovers = group_members(self.pid)
            for sig in (signal.SIGKILL,):
                try:
                    os.killpg(self.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            if self.cli.proc.poll() is None:
                self.cli.proc.wait(5)
            self.cli.log_file.close()
            wait_for(lambda: not group_members(self.pid), 5, message="the process group to end")
        return leftovers


@pytest.fixture
def supervise(tmp_path):
    """``supervise(app, *args, env={...})`` starts a supervisor; all are cleaned up after.

    A test that leaves processes behind fails here, after the kill that removes them.
    """
    started = []

    def start(app, *args, env, name=None, wrapper=()):
        """``wrapper``: a command that execs the supervisor (``ip netns exec <host>``)."""
        supervised = Supervised(tmp_path, app, list(args), env,
                                name=name or f"sv{len(started) + 1}", wrapper=wrapper)
        started.append(supervised)
        return supervised

    yield start
    leftovers = {}
    for supervised in started:
        left = supervised.close()
        if left:
            leftovers[supervised.pid] = left
    assert not leftovers, f"processes left behind by the supervisors: {leftovers}"


def elapsed(since):
    return time.monotonic() - since


def senders(enqueuer, queue):
    """Worker classes named like the test apps' ones, for enqueueing from the test process.

    They share the apps' job options (``max_retries`` travels in a Sidekiq payload), and
    differ only in the queue, which is per test.
    """
    from apps import supervised
    import jobrunner

    bodies = {"Record": supervised.RecordJob, "AlwaysFails": supervised.AlwaysFailsJob,
              "Slow": supervised.SlowJob, "TooSlow": supervised.TooSlowJob,
              "IgnoresAlarm": supervised.IgnoresAlarmJob, "DiesOnce": supervised.DiesOnceJob}
    return {name: type(name, (body, jobrunner.Worker), {"enqueuer": enqueuer, "queue": queue})
            for name, body in bodies.items()}


def assert_one_recycle_at_a_time(log, pool):
    """Between two "recycling" lines, the first recycled child must have been replaced."""
    events = []
    for line in log.splitlines():
        if f"recycling {pool} child " in line:
            events.append(("begin", line.split(f"recycling {pool} child ")[1].split()[0]))
        elif "recycled; a new one takes its place" in line:
            events.append(("end", line.split(f"{pool} child ")[1].split()[0]))
    assert len([e for e in events if e[0] == "begin"]) >= 3, log[-3000:]
    open_one = None
    for kind, pid in events:
        if kind == "begin":
            assert open_one is None, f"recycling {pid} while {open_one} was still recycling"
            open_one = pid
        else:
            assert pid == open_one
            open_one = None


def signal_pid(pid, sig):
    os.kill(pid, sig)


# -- what a backend kept of a dead job ----------------------------------------------------------

#: One dead job read back from a backend's own storage. ``attempts``: the failed runs the backend
#: recorded; ``raw``: the archive row (pgmq) or dead-set entry (Sidekiq), for backend-only fields.
DeadJob = collections.namedtuple("DeadJob", "worker error_class error_message attempts raw")


def pgmq_dead(row):
    """A row of pgmq's archive table (msg_id, read_ct, message, headers) as a ``DeadJob``."""
    error = (row["headers"] or {}).get("jobrunner_error") or {}
    return DeadJob(row["message"]["metadata"]["worker_name"], error.get("error_class"),
                   error.get("error_message"), error.get("attempts"), row)


def sidekiq_dead(item):
    """An entry of Sidekiq's ``dead`` set as a ``DeadJob``; ``retry_count`` is 0 after the
    first failed run, so the runs are one more."""
    return DeadJob(item["class"], item["error_class"], item["error_message"],
                   item["retry_count"] + 1, item)

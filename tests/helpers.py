"""Helpers shared by tests: waiting on a condition with a deadline, running the real CLI."""

import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def wait_for(condition, timeout=15.0, interval=0.02, message="condition"):
    """Poll ``condition`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def read_lines(path):
    try:
        with open(path) as handle:
            return [line.rstrip("\n") for line in handle if line.strip()]
    except FileNotFoundError:
        return []


class CliProcess:
    """`python -m jobrunner ...` in a subprocess with its output captured to a file."""

    def __init__(self, args, env, log_path):
        self.log_path = log_path
        self.log_file = open(log_path, "w")
        full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.path.dirname(HERE)]),
                        **env)
        self.proc = subprocess.Popen([sys.executable, "-m", "jobrunner", *args],
                                     stdout=self.log_file, stderr=subprocess.STDOUT,
                                     env=full_env, cwd=HERE, start_new_session=True)

    @property
    def pid(self):
        return self.proc.pid

    def output(self):
        with open(self.log_path) as handle:
            return handle.read()

    def wait_for_log(self, text, timeout=15.0):
        wait_for(lambda: text in self.output(), timeout, message=f"{text!r} in the log:\n"
                 + self.output()[-3000:])

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout=30.0):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("the supervisor did not exit; log:\n" + self.output()[-3000:])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log_file.close()


def child_pids(parent_pid):
    """PIDs of the direct children of ``parent_pid``."""
    try:
        with open(f"/proc/{parent_pid}/task/{parent_pid}/children") as handle:
            return [int(pid) for pid in handle.read().split()]
    except FileNotFoundError:
        return []


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False

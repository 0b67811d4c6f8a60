"""examples/sidekiq_interop/: run exactly the commands its README shows, against real Sidekiq.

Ruby enqueues -> our supervisor runs it (and enqueues back for Ruby) -> Sidekiq runs that;
Python enqueues -> Sidekiq runs it. Skipped when Ruby or Sidekiq is missing, unless ``CI`` is
set: then it fails (the rule of test_sidekiq_interop.py).
"""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys

import pytest
import redis

from helpers import wait_for

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "examples", "sidekiq_interop")

#: The README's commands, in its order; the test fails if the README says anything else.
COMMANDS = [
    "export REDIS_URL=redis://127.0.0.1:6379/0",
    "jobrunner run workers:registry",
    "sidekiq -r ./jobs.rb -q ruby",
    "ruby enqueue_for_python.rb Ada",
    "python workers.py Grace",
    'redis-cli -u "$REDIS_URL" lrange interop_example:log 0 -1',
]
LONG_RUNNING = {"jobrunner", "sidekiq"}

pytestmark = pytest.mark.slow


def _sidekiq_missing():
    if not shutil.which("ruby") or not shutil.which("sidekiq"):
        return "ruby or sidekiq is not installed"
    probe = subprocess.run(["ruby", "-e", 'require "sidekiq"'], capture_output=True)
    return None if probe.returncode == 0 else "the sidekiq gem does not load"


@pytest.fixture(autouse=True)
def needs_sidekiq():
    missing = _sidekiq_missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"Sidekiq interop tests need Ruby Sidekiq in CI: {missing}")
        pytest.skip(missing)


def readme_commands():
    """The commands of the README's first ``sh`` block, comments stripped."""
    with open(os.path.join(EXAMPLE, "README.md")) as handle:
        text = handle.read()
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_lists_the_commands_this_test_runs():
    assert readme_commands() == COMMANDS


def _argv(command):
    argv = shlex.split(command)
    if argv[0] == "python":
        argv[0] = sys.executable          # the interpreter jobrunner is installed in
    elif argv[0] == "jobrunner" and not shutil.which("jobrunner"):
        argv = [sys.executable, "-m", "jobrunner", *argv[1:]]
    return argv


def test_ruby_and_python_hand_each_other_jobs(redis_url, tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("JOBRUNNER_REDIS_URL", "JOBRUNNER_QUEUES")}
    background = []
    outputs = {}
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        for number, command in enumerate(readme_commands()):
            if command.startswith("export "):
                name, _, _ = command[len("export "):].partition("=")
                env[name] = redis_url             # the test's database, not database 0
                continue
            if command.startswith("redis-cli"):
                continue                          # run below, once the jobs have run
            argv = _argv(command)
            log_path = str(tmp_path / f"{number}.log")
            if argv[0] in LONG_RUNNING or argv[2:4] == ["jobrunner", "run"]:
                log = open(log_path, "w")
                background.append((command, log_path, log, subprocess.Popen(
                    argv, cwd=EXAMPLE, env=env, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True)))
            else:
                done = subprocess.run(argv, cwd=EXAMPLE, env=env, capture_output=True,
                                      text=True, timeout=60)
                assert done.returncode == 0, f"{command}:\n{done.stdout}{done.stderr}"
                outputs[command] = done.stdout

        def logs():
            return "\n".join(f"--- {c}\n" + open(p).read()[-2000:] for c, p, _, _ in background)

        entries = wait_for(lambda: [json.loads(x) for x in client.lrange("interop_example:log",
                                                                          0, -1)]
                           if client.llen("interop_example:log") >= 3 else None, 60,
                           message="three entries in interop_example:log; logs:\n" + logs())
        ran = sorted((e["ran"], e["args"]["name"], e["args"]["from"]) for e in entries)
        assert ran == [("python Greet", "Ada", "ruby"), ("ruby ThankYou", "Ada", "python"),
                       ("ruby ThankYou", "Grace", "python")], logs()
        assert "enqueued Greet(Ada) for Python" in outputs["ruby enqueue_for_python.rb Ada"]
        assert "enqueued ThankYou(Grace) for Ruby" in outputs["python workers.py Grace"]

        listing = COMMANDS[-1]
        if shutil.which("redis-cli"):
            done = subprocess.run(["bash", "-c", listing], cwd=EXAMPLE, env=env,
                                  capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr
            assert len(done.stdout.strip().splitlines()) == 3, done.stdout
        # Each queue was drained by its own language.
        assert client.llen("queue:python") == 0 and client.llen("queue:ruby") == 0
    finally:
        codes = {}
        for command, _, log, proc in background:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for command, _, log, proc in background:
            try:
                codes[command] = proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                codes[command] = proc.wait()
            log.close()
        client.close()
    assert codes == {c: 0 for c, _, _, _ in background}

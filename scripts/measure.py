"""Every performance measurement in one command: the benchmarks, scale, idle cost and the soak.

Usage (from the repository root, as root: the scale and soak servers run as ``postgres``)::

    python scripts/measure.py                    # everything, about 25 minutes
    python scripts/measure.py --drain-runs 1 --skip scale,soak      # about 6 minutes
    python scripts/measure.py --out /tmp/figures --jobs 5000

Steps, one after the other (each has the machine to itself), every output kept in ``--out``:

1. ``drain``: ``--drain-runs`` runs of the drain benchmarks (``benchmarks/test_drain*.py``,
   ``--jobs`` jobs per round), each printed as ``benchmarks/report.py``'s ratio table; the
   README's drain table is four such runs (``--drain-runs 4``).
2. ``others``: the rest of ``benchmarks/`` (enqueue, latency, memory, dashboard pages), once.
3. ``scale``: ``scripts/scale.py`` at its full sizes (1,000,000-job backlogs, 200 queues, 20
   idle supervisors).
4. ``idle``: ``scripts/idle_cost.py``, an idle child's round trips per second.
5. ``soak``: ``scripts/soak.py``, lost / duplicated / dead jobs under kills, freezes, hangs
   and server restarts.

A step that fails is reported and the next one still runs; the exit code is 1 if any failed.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ("drain", "others", "scale", "idle", "soak")
DRAIN_FILES = ["benchmarks/test_drain.py", "benchmarks/test_drain_pause.py",
               "benchmarks/test_drain_sidekiq_ruby.py"]
OTHER_FILES = ["benchmarks/test_enqueue.py", "benchmarks/test_latency.py",
               "benchmarks/test_resources.py", "benchmarks/test_web_pages.py"]


def pytest_benchmarks(files, json_path):
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", *files,
            "--benchmark-columns=mean,median,rounds", f"--benchmark-json={json_path}"]


def commands(args):
    """(name, argv, extra environment) for each step to run, in order."""
    skipped = set(filter(None, args.skip.split(",")))
    unknown = skipped - set(STEPS)
    if unknown:
        sys.exit(f"--skip: unknown step {', '.join(sorted(unknown))} (steps: {', '.join(STEPS)})")
    env = {"JOBRUNNER_BENCH_JOBS": str(args.jobs)}
    out = []
    if "drain" not in skipped:
        for run in range(1, args.drain_runs + 1):
            out.append((f"drain-{run}", pytest_benchmarks(
                DRAIN_FILES, os.path.join(args.out, f"drain-{run}.json")), env))
    if "others" not in skipped:
        out.append(("others", pytest_benchmarks(
            OTHER_FILES, os.path.join(args.out, "others.json")), {}))
    for step, script in (("scale", "scale.py"), ("idle", "idle_cost.py"), ("soak", "soak.py")):
        if step not in skipped:
            out.append((step, [sys.executable, os.path.join("scripts", script)], {}))
    return out


def run_step(name, argv, env, out_dir):
    """Run one step with its output shown and kept in ``<out>/<name>.log``; True if it passed."""
    log_path = os.path.join(out_dir, f"{name}.log")
    print(f"== {name}: {' '.join(argv)}", flush=True)
    started = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env}, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        code = proc.wait()
    print(f"== {name}: {'passed' if code == 0 else f'FAILED (exit {code})'} in "
          f"{time.monotonic() - started:.0f} s, output in {log_path}", flush=True)
    return code == 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for every step's output (default: a new one)")
    parser.add_argument("--jobs", type=int, default=20000, help="jobs per drain round")
    parser.add_argument("--drain-runs", type=int, default=2)
    parser.add_argument("--skip", default="", help=f"steps to leave out: {','.join(STEPS)}")
    args = parser.parse_args(argv)
    args.out = args.out or tempfile.mkdtemp(prefix="jobrunner-figures-")
    os.makedirs(args.out, exist_ok=True)
    failed = [name for name, step_argv, env in commands(args)
              if not run_step(name, step_argv, env, args.out)]
    print(f"figures in {args.out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

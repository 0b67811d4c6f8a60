"""``scripts/scale.py`` in its short form: it runs on both backends and prints every figure;
and the checks it and the drain benchmarks rest on: a rate refused when the jobs went before
they could be timed, and a pgmq "drained" probe that reads the primary key, not the heap; and
``scripts/measure.py``'s plan: every benchmark file and script, each step's output kept."""

import argparse
import os
import re
import subprocess
import sys

import psycopg2
import pytest

from helpers import PrivatePostgres

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[1:1] = [os.path.join(ROOT, "scripts")]
sys.path.append(os.path.join(ROOT, "benchmarks"))     # after tests/: its names come second

import runner  # noqa: E402  (benchmarks/runner.py)
import scale  # noqa: E402  (scripts/scale.py)
import scale_server  # noqa: E402
from scale_server import first_id  # noqa: E402

# Idle windows of 1 s: the short form's idle figures are noise, only printed. The shallow and
# many-queue drains have 20,000 jobs: with both backends at once on 2 cores, 5,000 drained
# faster than the polls could frame (a rate is refused then).
SHORT = ["--jobs", "20000", "--deep-sample", "5000", "--shallow", "20000", "--queue-jobs",
         "20000", "--queues", "5", "--idle-supervisors", "1", "--idle-seconds", "1"]
FIGURES = ["enqueue jobs/s", "deep jobs/s", "shallow jobs/s", "one queue jobs/s",
           "many queues jobs/s", "idle server calls/s per child", "idle CPU ms/s per child"]
BACKENDS = ("pgmq", "sidekiq")


@pytest.mark.slow
def test_the_scale_script_prints_every_figure_for_both_backends():
    if not PrivatePostgres.available():
        (pytest.fail if os.environ.get("CI") else pytest.skip)("a private Postgres needs root")
    # One run per backend, both at once: each has its own private server, and the short
    # form's rates are only checked to be there, so sharing the cores costs nothing checked.
    started = {backend: subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "scripts", "scale.py"), "--backends", backend,
         *SHORT], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        for backend in BACKENDS}
    values, summaries = {}, ""
    for backend, process in started.items():
        output = process.communicate(timeout=300)[0]
        assert process.returncode == 0, output
        summary = output.split("\nsummary\n", 1)[1]
        values.update(re.findall(r"^(\S.*?)\s{2,}(-?[\d,.]+)$", summary, re.MULTILINE))
        summaries += summary
    for backend in BACKENDS:
        for figure in FIGURES:
            value = float(values[f"{backend} {figure}"].replace(",", ""))
            # Idle figures are differences of two short windows: in the short form, noise.
            assert value > 0 or "idle" in figure, (backend, figure, summaries)
    for name in ("pgmq queue table MB after the backlog", "pgmq second deep jobs/s",
                 "sidekiq bytes per waiting job"):
        assert float(values[name].replace(",", "")) > 0, (name, summaries)
    for goal in ("drain at depth vs a shallow queue", "many queues vs one queue", "idle child"):
        assert summaries.count(goal) == 2, (goal, summaries)


def test_a_rate_is_refused_when_the_jobs_went_before_the_polls_could_frame_them():
    # A backlog drained while it was still being enqueued: every poll reads it all done.
    with pytest.raises(SystemExit, match="too few to time"):
        scale.rate_between(lambda: 1000, 1000, 100, 900, timeout=5, interval=0.001)
    # First polled past the middle of the span: less than half of it would be timed.
    polls = iter([600, 950])
    with pytest.raises(SystemExit, match="only 350 drained"):
        scale.rate_between(lambda: next(polls), 1000, 100, 900, timeout=5, interval=0.001)
    # Drained as it is polled: the polls frame the span.
    polls = iter(range(0, 1001, 50))
    assert scale.rate_between(lambda: next(polls), 1000, 100, 900, timeout=5,
                              interval=0.001) > 0


def test_the_pgmq_drained_probes_read_the_primary_key(pg_dsn, queue_name):
    """Of a queue whose statistics say it is full, the probes must still read the index: an
    ``EXISTS`` drops the ORDER BY and LIMIT and may scan the heap, every dead row of a
    drained backlog included."""
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pgmq.create(%s)", (queue_name,))
            cur.execute("SELECT pgmq.send_batch(%s, array_fill('{}'::jsonb, ARRAY[5000]))",
                        (queue_name,))
            cur.execute(f"ANALYZE pgmq.q_{queue_name}")
            for probe in (f"SELECT {first_id(queue_name)}",
                          runner.PGMQ_FIRST_ID.format(queue=queue_name)):
                cur.execute("EXPLAIN " + probe)
                plan = "\n".join(row[0] for row in cur.fetchall())
                assert "Index" in plan and "Seq Scan" not in plan, (probe, plan)
            assert not runner.pgmq_drained(conn, queue_name)
            cur.execute(f"DELETE FROM pgmq.q_{queue_name}")
            assert runner.pgmq_drained(conn, queue_name)
    finally:
        conn.close()


def test_the_measure_script_runs_every_benchmark_file_and_every_script(tmp_path):
    import measure      # scripts/measure.py
    benchmark_files = sorted(f"benchmarks/{name}" for name in os.listdir(
        os.path.join(ROOT, "benchmarks")) if name.startswith("test_") and name.endswith(".py"))
    assert sorted(measure.DRAIN_FILES + measure.OTHER_FILES) == benchmark_files
    args = argparse.Namespace(out=str(tmp_path), jobs=300, drain_runs=2, skip="")
    plan = measure.commands(args)
    assert [name for name, _, _ in plan] == ["drain-1", "drain-2", "others", "scale", "idle",
                                             "soak"]
    assert all(env == {"JOBRUNNER_BENCH_JOBS": "300"} for name, _, env in plan[:2])
    assert [name for name, _, _ in measure.commands(
        argparse.Namespace(**dict(vars(args), skip="scale,soak")))] == ["drain-1", "drain-2",
                                                                         "others", "idle"]
    with pytest.raises(SystemExit, match="unknown step sock"):
        measure.commands(argparse.Namespace(**dict(vars(args), skip="sock")))


def test_a_failed_measure_step_is_reported_and_its_output_kept(tmp_path, capsys):
    import measure
    failing = [sys.executable, "-c", "print('half a figure'); raise SystemExit(3)"]
    assert not measure.run_step("scale", failing, {}, str(tmp_path))
    assert (tmp_path / "scale.log").read_text() == "half a figure\n"
    assert "scale: FAILED (exit 3)" in capsys.readouterr().out
    assert measure.run_step("idle", [sys.executable, "-c", "pass"], {}, str(tmp_path))


def test_the_pgmq_progress_probe_leaves_out_a_queue_once_drained(pg_dsn, queue_name):
    server = object.__new__(scale_server.PgmqServer)     # the probe's connection only
    server.conn = psycopg2.connect(pg_dsn)
    server.conn.autocommit = True
    first, second = queue_name + "_a", queue_name + "_b"
    try:
        marks = {q: server.mark(q) for q in (first, second)}
        with server.conn.cursor() as cur:
            for queue in (first, second):
                cur.execute("SELECT pgmq.send_batch(%s, array_fill('{}'::jsonb, ARRAY[3]))",
                            (queue,))
            progress = server.progress([first, second], 6, marks)
            assert progress() == 0
            cur.execute(f"DELETE FROM pgmq.q_{first}")
            assert progress() == 3
            # Its table gone: a probe that still read it would fail.
            cur.execute("SELECT pgmq.drop_queue(%s)", (first,))
            cur.execute(f"DELETE FROM pgmq.q_{second} WHERE msg_id = "
                        f"(SELECT min(msg_id) FROM pgmq.q_{second})")
            assert progress() == 4
    finally:
        with server.conn.cursor() as cur:
            cur.execute("SELECT pgmq.drop_queue(%s)", (second,))
        server.conn.close()

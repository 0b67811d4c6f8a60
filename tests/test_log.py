"""Unit tests of the log set-up: the text and JSON line formats."""

import io
import json
import logging

import pytest

from jobrunner import log as logsetup


class CountingStream(io.StringIO):
    """A text stream that records each write, as the system calls it would make."""

    def __init__(self):
        super().__init__()
        self.writes = []

    def write(self, text):
        self.writes.append(text)
        return super().write(text)


@pytest.fixture
def stream():
    out = CountingStream()
    root = logging.getLogger("jobrunner")
    saved = (root.handlers[:], root.level, root.propagate)
    yield out
    root.handlers[:], root.level, root.propagate = saved
    logsetup.set_label("supervisor")


def lines(stream):
    return stream.getvalue().splitlines()


def test_text_lines_carry_time_label_pid_and_level(stream):
    logsetup.setup("INFO", stream=stream)
    logsetup.set_label("pgmq.1")
    logging.getLogger("jobrunner.child").info("job %s", "done")
    (line,) = lines(stream)
    assert line.endswith(" INFO job done") and " pgmq.1[" in line and line[23] == "Z"


def test_json_lines_carry_the_job_fields(stream):
    logsetup.setup("INFO", "json", stream=stream)
    logging.getLogger("jobrunner.child").info("job done", extra={"job": {"job_id": "a"},
                                                                 "outcome": "done"})
    entry = json.loads(stream.getvalue())
    assert entry["message"] == "job done" and entry["job"] == {"job_id": "a"}
    assert entry["outcome"] == "done" and entry["level"] == "INFO"


def test_a_failed_run_in_json_carries_its_error_and_traceback(stream):
    from jobrunner.job import ErrorInfo, Job, Outcome
    from jobrunner.process.joblog import log_outcome
    logsetup.setup("INFO", "json", stream=stream)
    try:
        raise ValueError("card declined")
    except ValueError as exc:
        error = ErrorInfo.from_exception(exc)
    log_outcome(Job(id="j1", worker_name="Charge", queue="billing", attempt=1),
                Outcome.RETRY, 0.01, error)
    entry = json.loads(stream.getvalue())
    assert entry["level"] == "WARNING" and entry["outcome"] == "retry"
    assert entry["error"] == {"class": "ValueError", "message": "card declined"}
    first, *rest = entry["message"].splitlines()
    assert first.endswith("error=ValueError: card declined")
    assert rest[0] == "Traceback (most recent call last):" and "test_log.py" in rest[1]


def test_by_default_every_line_is_written_at_once(stream):
    logsetup.setup("INFO", stream=stream)
    logger = logging.getLogger("jobrunner.child")
    logger.info("one")
    logger.info("two")
    assert len(stream.writes) == 2 and len(lines(stream)) == 2

"""Unit tests of the log set-up: the text and JSON line formats, which loggers they cover, and
the running job's fields on every line logged during a job."""

import io
import json
import logging
import logging.config
import os
import warnings

import pytest

from jobrunner import log as logsetup
from jobrunner.job import Job

from log_support import configure, stream  # noqa: F401 (fixtures)


JOB = Job(id="j1", worker_name="Charge", queue="billing", attempt=2)
TAG = " [worker=Charge id=j1 queue=billing attempt=2]"


@pytest.fixture
def during_job():
    """The job ``JOB`` is running while the test runs, as a child marks it around ``handle``."""
    running = logsetup.job_started(JOB)
    yield JOB
    logsetup.job_ended(running)


def lines(stream):
    return stream.getvalue().splitlines()


def test_text_lines_carry_time_label_pid_and_level(configure, stream):
    configure("INFO")
    logsetup.set_label("pgmq.1")
    logging.getLogger("jobrunner.child").info("job %s", "done")
    (line,) = lines(stream)
    assert line.endswith(" INFO job done") and " pgmq.1[" in line and line[23] == "Z"


def test_a_text_line_is_made_of_its_parts_whatever_was_written_before():
    formatter = logsetup.TextFormatter()
    at = 1700000000.0    # 2023-11-14T22:13:20Z
    assert formatter.line(at, 7.9, "INFO", "pgmq.1", 10, "jobrunner.child", "a") == \
        "2023-11-14T22:13:20.007Z pgmq.1[10] INFO a"
    # the part it keeps per label, pid, level and logger is never another's
    assert formatter.line(at + 1, 999.99, "INFO", "pgmq.2", 11, "jobrunner.child", "b",
                          " [tag]") == "2023-11-14T22:13:21.999Z pgmq.2[11] INFO b [tag]"
    assert formatter.line(at + 1, 120.0, "ERROR", "pgmq.2", 11, "myapp", "c") == \
        "2023-11-14T22:13:21.120Z pgmq.2[11] ERROR myapp: c"
    assert formatter.line(at, 0.0, "INFO", "pgmq.1", 10, "jobrunner.child", "d") == \
        "2023-11-14T22:13:20.000Z pgmq.1[10] INFO d"


def test_json_lines_carry_the_job_fields(configure, stream):
    configure("INFO", "json")
    logging.getLogger("jobrunner.child").info("job done", extra={"job": {"job_id": "a"},
                                                                 "outcome": "done"})
    entry = json.loads(stream.getvalue())
    assert entry["message"] == "job done" and entry["job"] == {"job_id": "a"}
    assert entry["outcome"] == "done" and entry["level"] == "INFO"


def test_a_failed_run_in_json_carries_its_error_and_traceback(configure, stream):
    from jobrunner.job import ErrorInfo, Outcome
    from jobrunner.process.joblog import log_outcome
    configure("INFO", "json")
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


def test_by_default_every_line_is_written_at_once(configure, stream):
    configure("INFO")
    logger = logging.getLogger("jobrunner.child")
    logger.info("one")
    logger.info("two")
    assert len(stream.writes) == 2 and len(lines(stream)) == 2


def test_success_lines_wait_for_the_next_line_and_go_in_one_write(configure, stream):
    from jobrunner.job import Outcome
    from jobrunner.process.joblog import log_outcome
    configure("INFO")
    log_outcome(JOB, Outcome.DONE, 0.01)
    log_outcome(Job(id="j2", worker_name="Charge", queue="billing", attempt=1), Outcome.DONE,
                0.02)
    assert stream.writes == []
    logging.getLogger("myapp").warning("card expiring")
    assert len(stream.writes) == 1
    first, second, third = lines(stream)
    assert " id=j1 " in first and " id=j2 " in second and third.endswith("card expiring")


def test_held_lines_go_when_released_or_when_too_many(configure, stream):
    from jobrunner.job import Outcome
    from jobrunner.process.joblog import log_outcome
    configure("INFO")
    log_outcome(JOB, Outcome.DONE, 0.01)
    logsetup.release_held_lines()
    assert len(stream.writes) == 1 and len(lines(stream)) == 1
    for _ in range(logsetup.HOLD_LIMIT):
        log_outcome(JOB, Outcome.DONE, 0.01)
    assert len(stream.writes) == 2 and len(lines(stream)) == 1 + logsetup.HOLD_LIMIT


@pytest.fixture
def records_made(monkeypatch):
    """The LogRecords that logging made during the test, by logger name."""
    made = []
    real = logging.Logger.makeRecord

    def counting(self, name, *args, **kwargs):
        made.append(name)
        return real(self, name, *args, **kwargs)
    monkeypatch.setattr(logging.Logger, "makeRecord", counting)
    return made


def _without_time(line, fmt):
    if fmt == "json":
        entry = json.loads(line)
        entry.pop("time")
        return entry
    return line.split(" ", 1)[1]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_success_line_is_held_without_a_log_record_and_reads_as_logging_would_write_it(
        configure, stream, records_made, fmt):
    from jobrunner.job import Outcome
    from jobrunner.process.joblog import log_outcome
    configure("INFO", fmt)
    log_outcome(JOB, Outcome.DONE, 0.0123)
    assert records_made == [] and stream.writes == []       # held, and no record was made
    child = logging.getLogger("jobrunner.child")
    child.addFilter(lambda record: True)        # something else looks: logging makes the line
    try:
        log_outcome(JOB, Outcome.DONE, 0.0123)
    finally:
        child.filters.clear()
    assert records_made == ["jobrunner.child"]
    logsetup.release_held_lines()
    direct, through_logging = lines(stream)
    assert _without_time(direct, fmt) == _without_time(through_logging, fmt)
    if fmt == "text":
        assert direct.split(" ", 1)[1] == (
            f"supervisor[{os.getpid()}] INFO job done worker=Charge id=j1 "
            f"queue=billing attempt=2 duration=0.0123s")
    else:
        entry = json.loads(direct)
        assert entry["job"]["job_id"] == "j1" and entry["outcome"] == "done"
        assert entry["duration"] == 0.0123 and entry["logger"] == "jobrunner.child"


def test_a_failure_line_is_never_held(configure, stream):
    from jobrunner.job import ErrorInfo, Outcome
    from jobrunner.process.joblog import log_outcome
    configure("INFO")
    log_outcome(JOB, Outcome.RETRY, 0.01, ErrorInfo(error_class="ValueError", message="no"))
    assert len(stream.writes) == 1 and "error=ValueError: no" in stream.getvalue()


# -- every logger, not only jobrunner's ---------------------------------------------------------

def test_without_an_app_config_every_logger_gets_the_format_and_level(configure, stream):
    assert configure("WARNING") is True
    logging.getLogger("myapp.mail").info("below the level: dropped")
    logging.getLogger("myapp.mail").warning("card %s declined", 7)
    logging.getLogger("jobrunner.child").warning("lost the backend connection")
    app, own = lines(stream)
    assert app.endswith(" supervisor[%d] WARNING myapp.mail: card 7 declined" % os.getpid()), app
    # jobrunner's own lines are as they always were, and written once, not once per handler
    assert own.endswith(" supervisor[%d] WARNING lost the backend connection" % os.getpid()), own


@pytest.fixture
def loggers_kept():
    """Every logger's ``disabled`` flag as it was, restored after the test (a dictConfig
    changes them for the whole process)."""
    saved = {name: logger.disabled for name, logger in logging.root.manager.loggerDict.items()
             if isinstance(logger, logging.Logger)}
    yield
    for name, disabled in saved.items():
        logging.getLogger(name).disabled = disabled


def test_an_app_dict_config_that_disables_existing_loggers_does_not_silence_ours(
        configure, stream, loggers_kept):
    own = logging.getLogger("jobrunner.process.child")      # exists: imported by now
    logging.config.dictConfig({"version": 1, "handlers": {"app": {
        "class": "logging.StreamHandler", "stream": "ext://sys.stdout"}},
        "root": {"handlers": ["app"], "level": "WARNING"}})
    assert own.disabled            # what the app's configuration did
    configure("INFO", app_handlers=logging.getLogger().handlers)
    own.warning("lost the backend connection")
    assert lines(stream)[-1].endswith(" WARNING lost the backend connection")


def test_json_covers_every_logger_and_python_warnings(configure, stream):
    configure("INFO", "json")
    logging.getLogger("myapp").info("sent")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("old_api() is deprecated", DeprecationWarning)
    app, warning = [json.loads(line) for line in lines(stream)]
    assert (app["logger"], app["message"], app["level"]) == ("myapp", "sent", "INFO")
    assert "job" not in app
    assert warning["logger"] == "py.warnings" and warning["level"] == "WARNING"
    assert "DeprecationWarning: old_api() is deprecated" in warning["message"]


# -- the running job's fields ---------------------------------------------------------------

def test_a_text_line_logged_during_a_job_ends_with_the_job(configure, stream):
    configure("INFO")
    logsetup.set_label("pgmq.1")
    running = logsetup.job_started(JOB)
    logging.getLogger("myapp").info("charging")
    logging.getLogger("jobrunner.middleware").warning("after hook failed")
    logsetup.job_ended(running)
    logging.getLogger("myapp").info("between jobs")
    during_app, during_own, after = lines(stream)
    assert during_app.endswith(" INFO myapp: charging" + TAG), during_app
    assert during_own.endswith(" WARNING after hook failed" + TAG), during_own
    assert after.endswith(" INFO myapp: between jobs"), after


def test_the_job_tag_comes_before_the_traceback(configure, stream, during_job):
    configure("INFO")
    try:
        raise KeyError("card")
    except KeyError:
        logging.getLogger("myapp").exception("lookup failed")
    first, second, *_ = lines(stream)
    assert first.endswith(" ERROR myapp: lookup failed" + TAG), first
    assert second == "Traceback (most recent call last):"


def test_a_json_line_logged_during_a_job_has_its_job_field(configure, stream, during_job):
    configure("INFO", "json")
    logging.getLogger("myapp").info("charging")
    (entry,) = [json.loads(line) for line in lines(stream)]
    assert entry["job"] == JOB.log_context() == {"job_id": "j1", "worker": "Charge",
                                                 "queue": "billing", "attempt": 2}
    assert entry["message"] == "charging"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_the_outcome_line_names_its_job_once(configure, stream, during_job, fmt):
    from jobrunner.job import Outcome
    from jobrunner.process.joblog import log_outcome
    configure("INFO", fmt)
    log_outcome(JOB, Outcome.DONE, 0.01)
    logsetup.release_held_lines()
    (line,) = lines(stream)
    if fmt == "text":
        assert line.endswith(" INFO job done worker=Charge id=j1 queue=billing attempt=2 "
                             "duration=0.0100s"), line
    else:
        assert json.loads(line)["job"] == JOB.log_context()


# -- an app that configured logging itself ------------------------------------------------

APP_FORMAT = "APP %(name)s job_id=%(job_id)s worker=%(worker)s queue=%(queue)s " \
             "attempt=%(attempt)s %(message)s%(job_tag)s"


@pytest.fixture
def app_handler():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter(APP_FORMAT))
    handler.setLevel(logging.DEBUG)
    return handler, out


def test_an_app_logging_config_stays_and_gains_the_job_fields(configure, stream, app_handler):
    handler, app_out = app_handler
    logging.getLogger().setLevel(logging.DEBUG)       # the app's level
    assert configure("WARNING", app_handlers=[handler]) is False
    root = logging.getLogger()
    assert root.handlers == [handler] and root.level == logging.DEBUG
    app_log = logging.getLogger("myapp")
    app_log.debug("before any job")
    running = logsetup.job_started(JOB)
    app_log.debug("charging")
    logging.getLogger("jobrunner.child").warning("a jobrunner line")
    logsetup.job_ended(running)
    assert app_out.getvalue().splitlines() == [
        "APP myapp job_id=- worker=- queue=- attempt=- before any job",
        "APP myapp job_id=j1 worker=Charge queue=billing attempt=2 charging" + TAG]
    # jobrunner's own lines keep jobrunner's handler, format and level
    (own,) = lines(stream)
    assert own.endswith(" WARNING a jobrunner line" + TAG), own


def test_a_records_own_extra_fields_win_and_never_raise(configure, app_handler, during_job):
    handler, app_out = app_handler
    logging.getLogger().setLevel(logging.INFO)        # the app's level
    configure("INFO", app_handlers=[handler])
    logging.getLogger("myapp").info("moved", extra={"queue": "own-queue", "worker": "w-3"})
    assert app_out.getvalue().splitlines() == [
        "APP myapp job_id=j1 worker=w-3 queue=own-queue attempt=2 moved" + TAG]


def test_setting_up_twice_does_not_count_its_own_handler_as_the_apps(configure, stream):
    assert configure("INFO") is True
    assert logsetup.setup("INFO", stream=stream) is True
    logging.getLogger("myapp").info("once")
    assert len(lines(stream)) == 1

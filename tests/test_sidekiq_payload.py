"""Unit tests of the Sidekiq wire format as pure functions: parsing, failure fields, order."""

import json

import pytest

from jobrunner import Worker
from jobrunner.backends.sidekiq import heartbeat
from jobrunner.backends.sidekiq import payload as sp
from jobrunner.job import ErrorInfo


class PayloadWorker(Worker):
    name = "PayloadWorker"
    queue = "mail"
    max_retries = 7

    def handle(self, args):
        pass


ERROR = ErrorInfo(error_class="ValueError", message="bad value", backtrace=["line 1", "line 2"])


def raw_job(**fields):
    item = {"class": "PayloadWorker", "args": [1], "queue": "mail", "jid": "a" * 24}
    item.update(fields)
    return json.dumps({k: v for k, v in item.items() if v is not ...})


# -- client side --------------------------------------------------------------------------

def test_client_payload_has_every_field_sidekiq_needs():
    jids, (raw,) = sp.client_payloads(PayloadWorker, ['{"k":1}'], 1795848798.1936784)
    item = json.loads(raw)
    assert list(item) == ["class", "args", "queue", "retry", "jid", "created_at", "enqueued_at"]
    assert item["class"] == "PayloadWorker"
    assert item["args"] == [{"k": 1}]
    assert item["queue"] == "mail"
    assert item["retry"] == 7 and type(item["retry"]) is int
    assert jids == [item["jid"]]
    assert len(item["jid"]) == 24 and item["jid"] == item["jid"].lower()
    int(item["jid"], 16)
    assert item["created_at"] == item["enqueued_at"] == 1795848798.1936784
    # Byte for byte what encoding the hash itself gives, Ruby's compact JSON.generate form.
    assert raw == sp.encode(item)


def test_client_payloads_give_each_job_its_own_jid_in_order():
    jids, raws = sp.client_payloads(PayloadWorker, ["1", '"two"', "[3]"], 10.0)
    items = [json.loads(raw) for raw in raws]
    assert [item["args"] for item in items] == [[1], ["two"], [[3]]]
    assert [item["jid"] for item in items] == jids and len(set(jids)) == 3


def test_scheduled_payload_has_no_enqueued_at():
    _, (raw,) = sp.client_payloads(PayloadWorker, ["1"], 10.0, enqueued=False)
    assert "enqueued_at" not in json.loads(raw)


def test_extra_fields_follow_the_client_fields():
    _, (raw,) = sp.client_payloads(PayloadWorker, ["1"], 10.0, extra={"periodic": {"tick": 5}})
    item = json.loads(raw)
    assert list(item)[-1] == "periodic" and item["periodic"] == {"tick": 5}
    assert raw == sp.encode(item)


def test_encode_is_compact_raw_utf8():
    assert sp.encode({"a": ["é", 1.5]}) == '{"a":["é",1.5]}'


# -- parsing ------------------------------------------------------------------------------

def test_one_element_args_hands_the_element():
    job = sp.parse(raw_job(args=[{"x": 1}]), "mail")
    assert job.args == {"x": 1} and job.problem is None
    assert job.id == "a" * 24 and job.worker_name == "PayloadWorker" and job.queue == "mail"


@pytest.mark.parametrize("args", [[], [1, 2], [[1], {"a": 2}, None]])
def test_other_lengths_hand_the_list(args):
    assert sp.parse(raw_job(args=args), "mail").args == args


def test_missing_or_null_args_hand_an_empty_list():
    # Sidekiq calls perform() with no arguments; that is handle([]) under the length rule.
    assert sp.parse(raw_job(args=...), "mail").args == []
    assert sp.parse(raw_job(args=None), "mail").args == []
    assert sp.parse(raw_job(args=...), "mail").problem is None


@pytest.mark.parametrize("args", ["text", {"a": 1}, 5])
def test_args_that_are_not_a_list_are_a_problem(args):
    raw = raw_job(args=args)
    job = sp.parse(raw, "mail")
    assert "'args' must be a JSON array" in job.problem
    assert job.receipt == raw and job.worker_name == "PayloadWorker"


def test_invalid_json_is_a_problem_not_an_exception():
    job = sp.parse("{not json", "mail")
    assert job.problem.startswith("invalid JSON")
    assert job.receipt == "{not json" and job.queue == "mail"


@pytest.mark.parametrize("raw", ["[1,2]", '"str"', "7", "null"])
def test_json_that_is_not_an_object_is_a_problem(raw):
    job = sp.parse(raw, "mail")
    assert "not an object" in job.problem and job.receipt == raw


@pytest.mark.parametrize("klass", [..., None, 5, ""])
def test_missing_or_bad_class_is_a_problem(klass):
    job = sp.parse(raw_job(**{"class": klass}), "mail")
    assert "'class'" in job.problem and job.worker_name is None


@pytest.mark.parametrize("retry, max_retries, keep_dead", [
    (True, None, True), (False, 0, False), (0, 0, True), (5, 5, True), (..., None, True),
    (None, None, True), (-3, 0, True), ("yes", None, True)])
def test_retry_option(retry, max_retries, keep_dead):
    job = sp.parse(raw_job(retry=retry), "mail")
    assert (job.max_retries, job.keep_dead) == (max_retries, keep_dead)


def test_bool_is_checked_before_int():
    # True == 1 in Python: a naive isinstance(int) test would allow one retry for retry:true.
    assert sp.retry_policy({"retry": True}) == (None, True)
    assert sp.retry_policy({"retry": 1}) == (1, True)


def test_dead_false_does_not_keep_dead():
    assert sp.parse(raw_job(retry=3, dead=False), "mail").keep_dead is False


@pytest.mark.parametrize("count, attempt", [(..., 1), (0, 2), (4, 6), (-1, 1), (True, 1)])
def test_attempt_from_retry_count(count, attempt):
    assert sp.parse(raw_job(retry_count=count), "mail").attempt == attempt


def test_timestamps_in_seconds_or_milliseconds():
    assert sp.parse(raw_job(enqueued_at=1795848798.25), "q").enqueued_at == 1795848798.25
    assert sp.parse(raw_job(enqueued_at=1795848798250), "q").enqueued_at == 1795848798.25
    assert sp.parse(raw_job(enqueued_at="soon"), "q").enqueued_at is None


# -- failure fields -----------------------------------------------------------------------

def test_first_failure_sets_failed_at_and_count_zero():
    item = sp.failed_item({"class": "X", "args": [], "custom": {"k": 1}}, ERROR, 100.5, "mail")
    assert item["failed_at"] == 100.5 and item["retry_count"] == 0
    assert "retried_at" not in item
    assert item["error_class"] == "ValueError" and item["error_message"] == "bad value"
    assert item["queue"] == "mail" and item["custom"] == {"k": 1}


def test_later_failure_sets_retried_at_and_adds_one():
    item = sp.failed_item({"class": "X", "failed_at": 1.0, "retry_count": 2}, ERROR, 9.0, "q")
    assert (item["failed_at"], item["retried_at"], item["retry_count"]) == (1.0, 9.0, 3)


def test_retry_queue_rewrites_queue():
    assert sp.failed_item({"class": "X", "retry_queue": "slow"}, ERROR, 1.0, "q")["queue"] \
        == "slow"


def test_message_is_truncated_and_scrubbed():
    long = ErrorInfo(error_class="E", message="x" * 20000 + "\ud800")
    assert len(sp.failed_item({"class": "X"}, long, 1.0, "q")["error_message"]) == 10000
    odd = ErrorInfo(error_class="E", message="a\ud800b")
    assert sp.failed_item({"class": "X"}, odd, 1.0, "q")["error_message"] == "a?b"


@pytest.mark.parametrize("option, lines", [(True, ["line 1", "line 2"]), (1, ["line 2"])])
def test_backtrace_option_writes_sidekiq_error_backtrace(option, lines):
    item = sp.failed_item({"class": "X", "backtrace": option}, ERROR, 1.0, "q")
    text = item["error_backtrace"]
    assert all(len(line) <= 60 for line in text.split("\n")) and text.endswith("\n")
    assert sp.decode_backtrace(text) == lines


def test_a_jobrunner_worker_keeps_its_backtrace_by_default():
    item = sp.failed_item({"class": "X"}, ERROR, 1.0, "q")
    assert sp.decode_backtrace(item["error_backtrace"]) == ["line 1", "line 2"]


@pytest.mark.parametrize("keep, lines", [(False, None), (0, None), (1, ["line 2"])])
def test_the_workers_backtrace_option_limits_what_is_kept(keep, lines):
    error = ErrorInfo(error_class="E", message="m", backtrace=["line 1", "line 2"], keep=keep)
    item = sp.failed_item({"class": "X", "error_backtrace": "stale"}, error, 1.0, "q")
    kept = item.get("error_backtrace")
    assert (None if kept is None else sp.decode_backtrace(kept)) == lines


def test_a_ruby_payloads_own_backtrace_option_wins():
    assert "error_backtrace" not in sp.failed_item({"class": "X", "backtrace": False}, ERROR,
                                                   1.0, "q")


def test_dead_member_keeps_invalid_json_raw():
    job = sp.parse("{oops", "mail")
    assert sp.dead_member(job, ERROR, 5.0) == "{oops"


@pytest.mark.parametrize("raw", ["[1,2]", '{"args":[]}'])
def test_dead_member_wraps_payloads_that_are_not_jobs(raw):
    job = sp.parse(raw, "mail")
    item = json.loads(sp.dead_member(job, ERROR, 5.0))
    assert item["class"] == sp.INVALID_PAYLOAD_CLASS and item["args"] == [raw]
    assert item["queue"] == "mail" and item["retry"] is False and len(item["jid"]) == 24
    assert item["error_class"] == "InvalidPayload" and item["error_message"] == job.problem
    assert item["failed_at"] == 5.0


def test_due_member_sets_fresh_enqueued_at_and_keeps_the_rest():
    raw = '{"retry":true,"queue":"q","class":"K","args":[1],"jid":"j","created_at":1.5,"z":[]}'
    queue, member = sp.due_member(raw, 42.0)
    assert queue == "q"
    assert json.loads(member) == dict(json.loads(raw), enqueued_at=42.0)
    assert list(json.loads(member))[:6] == list(json.loads(raw))[:6]


def test_due_member_without_queue_uses_default_and_bad_ones_go_dead():
    assert sp.due_member('{"class":"K","args":[]}', 1.0)[0] == "default"
    assert sp.due_member("{bad", 1.0) == (None, "{bad")
    queue, member = sp.due_member("[1]", 1.0)
    assert queue is None and json.loads(member)["class"] == sp.INVALID_PAYLOAD_CLASS


# -- keys, heartbeat ---------------------------------------------------------

def test_key_helpers():
    assert sp.queue_key("mail") == "queue:mail"
    child = "host:12:abcdef012345:99"
    assert sp.inflight_key(child) == "jobrunner:inflight:host:12:abcdef012345:99"
    assert sp.child_of_inflight_key(sp.inflight_key(child)) == child
    assert sp.owner_identity(child) == "host:12:abcdef012345"
    assert sp.stat_keys(0.0)[2:] == ("stat:processed:1970-01-01", "stat:failed:1970-01-01")


def test_work_entry_keeps_payload_as_a_string_and_run_at_integer():
    entry = json.loads(heartbeat.work_entry("q", '{"class":"K"}', 12.9))
    assert entry == {"queue": "q", "payload": '{"class":"K"}', "run_at": 12}


def test_a_payload_nested_too_deeply_is_a_problem_not_a_crash():
    raw = "[" * 100000 + "]" * 100000
    item, problem = sp.load_item(raw)
    assert item is None and problem.startswith(sp.INVALID_JSON)
    job = sp.parse(raw, "mail")
    assert job.problem and job.receipt == raw

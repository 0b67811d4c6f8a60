"""Unit tests of the public contract: Worker options, argument checks, the Registry, settings."""

import datetime
import json
import math
import time
import uuid

import pytest

import jobrunner
from jobrunner import config
from jobrunner.errors import ConfigError
from jobrunner.job import encode_args, new_job_id, new_job_ids


class Plain(jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer

    def handle(self, args):
        pass


def test_worker_defaults_follow_the_contract():
    assert Plain.name == "Plain"
    assert Plain.queue == "default"
    assert Plain.max_retries == 25
    assert Plain.timeout == 60.0


def test_worker_name_can_be_set_and_is_not_inherited():
    class Named(Plain):
        name = "custom.Name"

    class Child(Named):
        pass

    assert Named.name == "custom.Name"
    assert Child.name == "Child"


@pytest.mark.parametrize("option, value", [
    ("max_retries", -1), ("max_retries", True), ("max_retries", 1.5), ("timeout", 0),
    ("timeout", "60"), ("queue", ""), ("success_action", "keep"), ("failure_action", None),
    ("backtrace", -1), ("backtrace", "all"), ("backtrace", 2.5), ("backtrace", None),
])
def test_bad_worker_options_fail_when_the_class_is_defined(option, value):
    with pytest.raises(ConfigError, match=f"Bad.*{option}"):
        type("Bad", (jobrunner.Worker,), {option: value})


@pytest.mark.parametrize("args", [
    {"when": datetime.datetime(2024, 1, 1)}, {1, 2}, (1, 2), [(1, 2)], {1: "x"}, math.nan,
    b"bytes", object(), {"a": [{"deep": (1,)}]}, [math.inf], {"text": "lone \ud800 surrogate"},
])
def test_args_that_do_not_round_trip_raise_type_error_naming_worker_and_value(args):
    with pytest.raises(TypeError) as info:
        encode_args("Plain", args)
    assert "Plain" in str(info.value)
    assert repr(args)[:20] in str(info.value)


@pytest.mark.parametrize("args", [None, 1, 1.5, "s", True, [1, "a", None], {"a": {"b": [1]}},
                                  "café ☕", {"n": -0.0, "big": 2 ** 70}])
def test_json_args_pass_unchanged(args):
    assert json.loads(encode_args("Plain", args)) == args


def test_args_that_contain_themselves_or_nest_too_deep_raise_type_error():
    looped = {"name": "loop"}
    looped["self"] = looped
    deep = inner = []
    for _ in range(5000):
        inner.append([])
        inner = inner[0]
    for args in (looped, deep):
        with pytest.raises(TypeError, match="Plain: args must be JSON values"):
            encode_args("Plain", args)


def test_args_that_only_compare_equal_after_json_still_pass():
    # An int subclass is not a plain JSON type, so the full round trip decides: it passes.
    class Count(int):
        pass
    assert encode_args("Plain", {"n": Count(3)}) == '{"n":3}'


def test_encoded_args_are_compact_utf8_json():
    assert encode_args("Plain", {"a": [1, "é"]}) == '{"a":[1,"é"]}'


def test_bad_args_raise_before_any_io():
    # A connection that explodes on any use proves enqueue checked the args first.
    class Explodes:
        def __getattr__(self, name):
            raise AssertionError("enqueue touched the connection")

    with pytest.raises(TypeError, match="Plain"):
        Plain.enqueue(Explodes(), {"at": datetime.date.today()})
    with pytest.raises(TypeError, match="Plain"):
        Plain.enqueue_batch(Explodes(), [1, {2}])
    with pytest.raises(TypeError, match="timezone-aware"):
        Plain.enqueue_at(Explodes(), datetime.datetime.now(), 1)
    with pytest.raises(TypeError, match="delay"):
        Plain.enqueue_in(Explodes(), "soon", 1)
    with pytest.raises(TypeError, match="list of args"):
        Plain.enqueue_batch(Explodes(), {"a": 1})


def test_worker_without_enqueuer_says_what_to_set():
    class Orphan(jobrunner.Worker):
        def handle(self, args):
            pass

    with pytest.raises(ConfigError, match="Orphan: set enqueuer"):
        Orphan.enqueue(None, 1)


def test_job_ids_are_uuid7_and_sort_by_time(monkeypatch):
    ids = [new_job_id() for _ in range(50)] + new_job_ids(500)
    parsed = [uuid.UUID(i) for i in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in parsed)
    assert [str(u) for u in parsed] == ids
    assert len(set(ids)) == 550
    assert all(abs((u.int >> 80) - time.time() * 1000) < 5000 for u in parsed)
    monkeypatch.setattr(time, "time_ns", lambda: 1_700_000_000_123 * 1_000_000)
    earlier = new_job_ids(20)
    monkeypatch.setattr(time, "time_ns", lambda: 1_700_000_000_124 * 1_000_000)
    later = new_job_id()
    assert all(e < later for e in earlier)
    assert {uuid.UUID(e).int >> 80 for e in earlier} == {1_700_000_000_123}


def test_registry_resolves_names_and_backends():
    registry = jobrunner.Registry()
    registry.register(Plain)
    assert registry.lookup("Plain") is Plain
    assert registry.lookup("Missing") is None
    assert registry.backends() == ["pgmq"]
    registry.register(Plain, backends=("pgmq", "sidekiq"))
    assert registry.backends() == ["pgmq", "sidekiq"]
    assert registry.queues("sidekiq") == ["default"]


def test_registry_refuses_two_classes_under_one_name_naming_both():
    class First(Plain):
        name = "Same"

    class Second(Plain):
        name = "Same"

    registry = jobrunner.Registry()
    registry.register(First)
    with pytest.raises(ConfigError) as info:
        registry.register(Second)
    assert "First" in str(info.value) and "Second" in str(info.value)


@pytest.mark.parametrize("queue", ["Upper", "x" * 48, "semi;colon", "dollar$", "quote'",
                                   "dash--dash", "space here", ""])
def test_registry_refuses_queue_names_pgmq_cannot_store(queue):
    worker = type("Q", (Plain,), {})
    worker.queue = queue
    with pytest.raises(ConfigError, match="not a valid pgmq queue name"):
        jobrunner.Registry().register(worker)


def test_registry_accepts_the_longest_valid_name():
    worker = type("Long", (Plain,), {"queue": "q" * 47})
    jobrunner.Registry().register(worker)


def test_registry_refuses_unknown_backends_and_non_workers():
    with pytest.raises(ConfigError, match="backends"):
        jobrunner.Registry().register(Plain, backends=("kafka",))
    with pytest.raises(ConfigError, match="Worker subclass"):
        jobrunner.Registry().register(object)


def test_register_periodic_checks_cron_at_registration():
    registry = jobrunner.Registry()
    registry.register_periodic(Plain, cron="*/5 * * * *", args={"k": 1})
    registry.register_periodic(Plain, cron="*/2 * * * * *", args={"k": 2})
    with pytest.raises(ConfigError, match="Plain.*cron"):
        registry.register_periodic(Plain, cron="every minute")
    with pytest.raises(ConfigError, match="Plain: invalid cron"):
        registry.register_periodic(Plain, cron="61 * * * *")
    with pytest.raises(ConfigError, match="twice"):
        registry.register_periodic(Plain, cron="*/5 * * * *", args={"k": 1})


def test_settings_precedence_is_kwargs_then_flags_then_environment():
    env = {"JOBRUNNER_PROCESSES": "7", "DATABASE_URL": "postgresql:///fromenv",
           "JOBRUNNER_SHUTDOWN_TIMEOUT": "9", "JOBRUNNER_QUEUES": "a, b"}
    settings = config.resolve({"processes": 3}, {"processes": 5, "shutdown_timeout": 4}, env)
    assert settings.processes == 3
    assert settings.shutdown_timeout == 4
    assert settings.pg_dsn == "postgresql:///fromenv"
    assert settings.queues == ["a", "b"]
    env["JOBRUNNER_PG_DSN"] = "postgresql:///preferred"
    assert config.resolve({}, {}, env).pg_dsn == "postgresql:///preferred"


def test_settings_defaults_and_errors():
    settings = config.resolve({}, {}, {})
    assert settings.shutdown_timeout == 25
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.processes >= 1
    with pytest.raises(ConfigError, match="JOBRUNNER_PROCESSES"):
        config.resolve({}, {}, {"JOBRUNNER_PROCESSES": "many"})
    with pytest.raises(ConfigError, match="processes"):
        config.resolve({"processes": 0}, {}, {})

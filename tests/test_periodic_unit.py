"""The pure periodic logic: cron ticks, schedule keys, the catch-up rule, the planner."""

import datetime

import pytest

import jobrunner
from jobrunner import schedule as periodic
from jobrunner.errors import ConfigError
from jobrunner.schedule import (Planner, Schedule, backend_for, due_ticks, latest_tick,
                                schedule_key, schedules_for, ticks_between)

UTC = datetime.timezone.utc
EVERY_SECOND = "* * * * * *"


def epoch(*fields, tz=UTC):
    return datetime.datetime(*fields, tzinfo=tz).timestamp()


T0 = epoch(2024, 1, 15, 12, 0, 0)     # a Monday, on a whole minute


class PgJob(jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer

    def handle(self, args):
        pass


class RedisJob(jobrunner.Worker):
    enqueuer = jobrunner.SidekiqEnqueuer

    def handle(self, args):
        pass


# -- ticks --------------------------------------------------------------------------------

def test_six_fields_put_seconds_first():
    assert ticks_between("*/20 * * * * *", T0, T0 + 60) == [T0 + 20, T0 + 40, T0 + 60]
    assert ticks_between("*/20 * * * *", T0, T0 + 3600) == [T0 + 1200, T0 + 2400, T0 + 3600]


def test_ticks_between_is_open_at_the_start_and_closed_at_the_end():
    assert ticks_between(EVERY_SECOND, T0, T0 + 3) == [T0 + 1, T0 + 2, T0 + 3]
    assert ticks_between(EVERY_SECOND, T0 + 0.5, T0 + 2.5) == [T0 + 1, T0 + 2]
    assert ticks_between(EVERY_SECOND, T0, T0) == []
    assert ticks_between(EVERY_SECOND, T0 + 5, T0) == []


def test_ticks_between_keeps_only_the_newest_up_to_the_limit():
    assert ticks_between(EVERY_SECOND, T0, T0 + 10, limit=3) == [T0 + 8, T0 + 9, T0 + 10]


def test_latest_tick_includes_an_exact_tick():
    assert latest_tick("*/5 * * * *", T0) == T0
    assert latest_tick("*/5 * * * *", T0 + 299.9) == T0
    assert latest_tick("*/5 * * * *", T0 + 300) == T0 + 300
    assert latest_tick(EVERY_SECOND, T0 + 0.999) == T0


def test_ticks_follow_the_schedules_time_zone():
    # 09:00 in Berlin is 08:00 UTC in winter and 07:00 UTC in summer.
    assert latest_tick("0 9 * * *", T0, "Europe/Berlin") == epoch(2024, 1, 15, 8, 0)
    assert latest_tick("0 9 * * *", epoch(2024, 7, 1, 12, 0), "Europe/Berlin") == \
        epoch(2024, 7, 1, 7, 0)


# -- the catch-up rule --------------------------------------------------------------------

def test_regular_passes_claim_every_tick_since_the_previous_pass():
    assert due_ticks(EVERY_SECOND, "UTC", T0 + 0.99, T0 + 2.01) == [T0 + 1, T0 + 2]
    assert due_ticks(EVERY_SECOND, "UTC", T0 + 1.5, T0 + 1.9) == []
    assert due_ticks("*/5 * * * *", "UTC", T0 + 1, T0 + 2) == []


def test_first_pass_claims_only_the_latest_tick_within_the_window():
    assert due_ticks(EVERY_SECOND, "UTC", None, T0 + 0.5) == [T0]
    assert due_ticks("0 * * * *", "UTC", None, T0 + 1800) == [T0]
    assert due_ticks("0 * * * *", "UTC", None, T0 + 1800, window=600) == []


def test_catch_up_never_fires_a_tick_from_before_the_schedule_existed():
    assert due_ticks("0 * * * *", "UTC", None, T0 + 1800, first_seen=T0 - 1) == [T0]
    assert due_ticks("0 * * * *", "UTC", None, T0 + 1800, first_seen=T0 + 60) == []


def test_a_pass_after_an_outage_runs_the_missed_ticks_once():
    since = T0 + 0.5
    assert due_ticks(EVERY_SECOND, "UTC", since, T0 + 30.5) == [T0 + 30]
    # ... but not a tick the previous pass already covered
    assert due_ticks("0 * * * *", "UTC", T0 + 1, T0 + 60) == []


def test_a_clock_that_steps_back_claims_nothing_it_has_already_covered():
    assert due_ticks(EVERY_SECOND, "UTC", T0 + 10.5, T0 + 9.5) == []
    assert due_ticks(EVERY_SECOND, "UTC", T0 + 10.5, T0 + 10.4) == []


# -- keys and schedules -------------------------------------------------------------------

def test_schedule_key_is_canonical_and_distinguishes_what_matters():
    key = schedule_key("W", "*/5 * * * *", {"a": 1, "b": [1, {"y": 2, "x": 1}]}, "UTC")
    assert key == schedule_key("W", "*/5  * * * * ", {"b": [1, {"x": 1, "y": 2}], "a": 1}, None)
    assert len({key,
                schedule_key("V", "*/5 * * * *", {"a": 1, "b": [1, {"y": 2, "x": 1}]}, "UTC"),
                schedule_key("W", "*/6 * * * *", {"a": 1, "b": [1, {"y": 2, "x": 1}]}, "UTC"),
                schedule_key("W", "*/5 * * * *", {"a": 2, "b": [1, {"y": 2, "x": 1}]}, "UTC"),
                schedule_key("W", "*/5 * * * *", {"a": 1, "b": [1, {"y": 2, "x": 1}]},
                             "Europe/Paris")}) == 5


def test_schedule_key_is_stable_across_processes_and_versions():
    # sha256 of canonical JSON, never Python's salted hash(): pinned so a change is noticed.
    assert schedule_key("W", "*/5 * * * *", {"k": 1}) == "8a9ec1304d8614715b38df790ef16609"


def test_each_schedule_fires_on_exactly_one_backend():
    registry = jobrunner.Registry()
    registry.register(PgJob, backends=("pgmq", "sidekiq"))     # migrating: drains both
    registry.register_periodic(PgJob, cron="*/5 * * * *", args={"k": 1})
    registry.register_periodic(RedisJob, cron="*/5 * * * *", args={"k": 1})
    registry.register_periodic(RedisJob, cron="*/5 * * * *", args={"k": 2})
    assert backend_for(registry, PgJob) == "pgmq"
    assert [s.worker for s in schedules_for(registry, "pgmq")] == [PgJob]
    assert [s.args for s in schedules_for(registry, "sidekiq")] == [{"k": 1}, {"k": 2}]
    assert schedules_for(None, "pgmq") == []


def test_a_worker_served_only_off_its_enqueuers_backend_fires_where_it_is_served():
    registry = jobrunner.Registry()
    registry.register(PgJob, backends=("sidekiq",))
    assert backend_for(registry, PgJob) == "sidekiq"


# -- the planner --------------------------------------------------------------------------

def make_schedule(cron=EVERY_SECOND, args=None):
    registry = jobrunner.Registry()
    return Schedule.from_entry(registry.register_periodic(PgJob, cron=cron, args=args))


def test_planner_catches_up_once_then_follows_every_tick():
    schedule = make_schedule()
    planner = Planner([schedule])
    assert planner.refresh_due(T0)
    planner.refreshed(T0, {schedule.key: T0 - 100})
    assert not planner.refresh_due(T0 + 1)
    assert planner.refresh_due(T0 + periodic.REFRESH_INTERVAL)
    assert planner.due(T0 + 0.2) == [(schedule, T0)]
    planner.passed(T0 + 0.2)
    assert planner.due(T0 + 2.3) == [(schedule, T0 + 1), (schedule, T0 + 2)]


def test_planner_repeats_ticks_of_a_pass_that_failed():
    schedule = make_schedule()
    planner = Planner([schedule])
    planner.passed(T0 + 0.2)
    assert planner.due(T0 + 1.2) == [(schedule, T0 + 1)]
    # no passed(): the claims failed (connection lost), so the next pass asks again
    assert planner.due(T0 + 2.2) == [(schedule, T0 + 1), (schedule, T0 + 2)]


# -- registration -------------------------------------------------------------------------

def test_register_periodic_refuses_args_that_do_not_round_trip():
    registry = jobrunner.Registry()
    with pytest.raises(ConfigError, match="PgJob: args must"):
        registry.register_periodic(PgJob, cron="* * * * *", args={"when": datetime.date.today()})
    with pytest.raises(ConfigError, match="round-trip"):
        registry.register_periodic(PgJob, cron="* * * * *", args=(1, 2))
    assert registry.periodic == []


def test_register_periodic_judges_duplicates_by_schedule_key():
    registry = jobrunner.Registry()
    registry.register_periodic(PgJob, cron="*/5 * * * *", args={"a": 1, "b": 2})
    registry.register_periodic(PgJob, cron="*/5 * * * *", args={"a": 1, "b": 2},
                               timezone="Europe/Paris")
    with pytest.raises(ConfigError, match="twice"):
        registry.register_periodic(PgJob, cron="*/5  * * * *", args={"b": 2, "a": 1})
    with pytest.raises(ConfigError, match="twice"):
        registry.register_periodic(PgJob, cron="*/5 * * * *", args={"b": 2, "a": 1},
                                   timezone=None)


def test_register_periodic_refuses_non_workers_and_bad_zones_clearly():
    registry = jobrunner.Registry()
    with pytest.raises(ConfigError, match="Worker subclass"):
        registry.register_periodic(object, cron="* * * * *")
    with pytest.raises(ConfigError, match="time zone"):
        registry.register_periodic(PgJob, cron="* * * * *", timezone="Mars/Olympus")
    assert registry.workers() == []

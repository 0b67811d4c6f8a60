"""Every bad setting stops ``jobrunner run`` before anything starts: exit 2, one line naming the
setting and the value, no traceback."""

import pytest

from jobrunner import config
from jobrunner.errors import ConfigError
from test_exposure import run_all

SENTINEL_FORMAT = ("redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service"
                   "[/db][?options]")


@pytest.mark.parametrize("fields, says", [
    ({"max_jobs": -3}, "max jobs must be at least 1 (or unset), got -3"),
    ({"max_jobs": 0}, "max jobs must be at least 1 (or unset), got 0"),
    ({"max_rss_mb": -1}, "max rss mb must be above 0 (or unset), got -1"),
    ({"heartbeat_timeout": 0}, "heartbeat timeout must be at least twice the heartbeat "
                               "interval (2 s), got 0"),
    ({"heartbeat_interval": 0}, "heartbeat interval must be above 0, got 0"),
    ({"timeout_grace": -1}, "timeout grace must be >= 0, got -1"),
    ({"fetch_timeout": -1}, "fetch timeout must be >= 0, got -1"),
    ({"pg_listen": "sometimes"}, "pg listen must be one of auto, on, off, got 'sometimes'"),
    ({"log_level": "verbose"}, "log level must be one of DEBUG, INFO, WARNING, ERROR, "
                               "CRITICAL, got 'verbose'"),
    ({"redis_url": "localhost:6390"}, "redis url must start with redis://, rediss://, "
                                      "unix://, redis+sentinel://; got 'localhost:6390'"),
    ({"redis_url": "redis+sentinel://:pw@s1:26379,s2:x/mymaster"},
     "redis url 'redis+sentinel://:***@s1:26379,s2:x/mymaster': bad port in sentinel host "
     "'s2:x'; expected " + SENTINEL_FORMAT),
    ({"redis_url": "redis+sentinel://s1,s2/"},
     "redis url 'redis+sentinel://s1,s2/': it names no master (the service name after the "
     "hosts); expected " + SENTINEL_FORMAT),
    ({"redis_url": "redis+sentinel://s1/mymaster/zero"},
     "redis url 'redis+sentinel://s1/mymaster/zero': the path must be /service or "
     "/service/db, got '/mymaster/zero'; expected " + SENTINEL_FORMAT),
])
def test_a_value_out_of_range_is_refused_naming_the_setting(fields, says):
    with pytest.raises(ConfigError) as caught:
        config.Settings(**fields)
    assert str(caught.value) == says


def test_good_values_at_the_edges_are_accepted():
    config.Settings(max_jobs=1, max_rss_mb=0.5, heartbeat_timeout=2.0, timeout_grace=0,
                    log_level="debug", redis_url="unix:///run/redis.sock")
    config.Settings(redis_url="redis+sentinel://:pw@s1,[::1]:26380/mymaster/2"
                              "?min_other_sentinels=1")


def test_with_no_flag_the_timeout_grace_is_the_documented_5_seconds():
    # tests/test_supervisor.py's kill after timeout + grace runs with --timeout-grace 2
    assert config.resolve(flags={"timeout_grace": None}, environ={}).timeout_grace == 5.0


def test_a_redis_url_without_its_scheme_is_shown_without_its_password():
    with pytest.raises(ConfigError) as caught:
        config.Settings(redis_url="cache:6379/0?password=hunter2")
    assert "hunter2" not in str(caught.value)


def test_queues_and_pools_must_be_served_by_a_registered_worker():
    served = ["mail", "default"]
    config.check_served(config.Settings(queues=["mail"], pools=["default=1"]), served)
    for settings, setting, queue in (
            (config.Settings(queues=["nope"]), "queues", "nope"),
            (config.Settings(queues=["mail", "nope"]), "queues", "nope"),
            (config.Settings(pools=["nope=2"]), "pools", "nope")):
        with pytest.raises(ConfigError) as caught:
            config.check_served(settings, served)
        assert str(caught.value) == (f"{setting}: no registered worker uses queue {queue!r} "
                                     "(the registered queues are mail, default)")


def test_jobrunner_run_stops_on_each_bad_setting_with_exit_2_and_one_line():
    app = "apps.redis_app:registry"
    results = run_all({
        "max-jobs": ["run", app, "--max-jobs", "-3"],
        "max-rss": ["run", app, "--max-rss-mb", "-1"],
        "heartbeat": ["run", app, "--heartbeat-timeout", "0"],
        "grace": ["run", app, "--timeout-grace", "-1"],
        "log-level": ["run", app, "--log-level", "verbose"],
        "redis-url": ["run", app, "--redis-url", "localhost:6390"],
        "sentinel-url": ["run", app, "--redis-url", "redis+sentinel://s1:26379/"],
        "queues": ["run", app, "--queues", "nope"],
        "some queues": ["run", app, "--queues", "nope,also_nope"],
        "pool": ["run", app, "--pool", "nope=2"],
    })
    for name, (code, output) in results.items():
        assert code == 2, (name, output)
        assert "Traceback" not in output, (name, output)
        lines = [line for line in output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("jobrunner: "), (name, output)
    assert "max jobs must be at least 1 (or unset), got -3" in results["max-jobs"][1]
    assert "no registered worker uses queue 'nope'" in results["queues"][1]
    assert "pools: no registered worker uses queue 'nope'" in results["pool"][1]
    assert "it names no master" in results["sentinel-url"][1]


def test_a_bad_pg_listen_in_the_environment_exits_2_naming_it():
    results = run_all({"pg-listen": ["run", "apps.pg_app:registry"]},
                      JOBRUNNER_PG_LISTEN="sometimes")
    code, output = results["pg-listen"]
    assert code == 2 and "Traceback" not in output, output
    assert output.strip() == ("jobrunner: pg listen must be one of auto, on, off, "
                              "got 'sometimes'"), output

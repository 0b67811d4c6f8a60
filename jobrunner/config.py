"""Supervisor settings: keyword arguments first, then CLI flags, then environment, then defaults."""

import os

import attr

from .errors import ConfigError


def _cpu_count():
    return os.cpu_count() or 1


@attr.s(frozen=True, kw_only=True)
class Settings:
    """Every knob of a supervisor, resolved once at start. See README's configuration table."""

    #: libpq DSN or URL for Postgres; None uses libpq's defaults (PGHOST, PGDATABASE, ...).
    pg_dsn = attr.ib(default=None)
    #: redis-py URL for Redis.
    redis_url = attr.ib(default="redis://localhost:6379/0")
    #: children per backend pool.
    processes = attr.ib(factory=_cpu_count)
    #: seconds a graceful stop waits for running jobs before it kills and requeues them.
    shutdown_timeout = attr.ib(default=25.0)
    #: queues to serve (None: every registered worker's queue), in priority order.
    queues = attr.ib(default=None)
    #: "reliable" (in-flight list per child, the default) or "basic" (Sidekiq's plain BRPOP).
    sidekiq_fetch = attr.ib(default="reliable")
    #: "strict" (first queue first) or "weighted" (random, by weight) queue order.
    queue_order = attr.ib(default="strict")
    #: seconds a child waits for work in one fetch before it checks the supervisor's pipe.
    fetch_timeout = attr.ib(default=1.0)
    #: jobs a pgmq child reads per round trip.
    pgmq_batch = attr.ib(default=1)
    #: install pgmq at start when it is missing.
    pgmq_install = attr.ib(default=False)
    #: recycle a child after this many jobs / this RSS in MB (None: never).
    max_jobs = attr.ib(default=None)
    max_rss_mb = attr.ib(default=None)
    #: seconds between a child's heartbeats on its pipe, and the silence that gets it killed.
    heartbeat_interval = attr.ib(default=1.0)
    heartbeat_timeout = attr.ib(default=30.0)
    #: extra seconds past a worker's timeout before the supervisor kills its child.
    timeout_grace = attr.ib(default=5.0)
    log_level = attr.ib(default="INFO")
    log_format = attr.ib(default="text")
    #: free text shown with the process in Sidekiq's UI (its ``tag``).
    tag = attr.ib(default="")

    def __attrs_post_init__(self):
        if self.processes < 1:
            raise ConfigError(f"processes must be at least 1, got {self.processes}")
        if self.shutdown_timeout < 0:
            raise ConfigError(f"shutdown timeout must be >= 0, got {self.shutdown_timeout}")
        if self.sidekiq_fetch not in ("reliable", "basic"):
            raise ConfigError(f"sidekiq fetch must be 'reliable' or 'basic', "
                              f"got {self.sidekiq_fetch!r}")
        if self.queue_order not in ("strict", "weighted"):
            raise ConfigError(f"queue order must be 'strict' or 'weighted', "
                              f"got {self.queue_order!r}")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log format must be 'text' or 'json', got {self.log_format!r}")


# setting name -> (environment variables in order of preference, converter)
_ENVIRONMENT = {
    "pg_dsn": (("JOBRUNNER_PG_DSN", "DATABASE_URL"), str),
    "redis_url": (("JOBRUNNER_REDIS_URL", "REDIS_URL"), str),
    "processes": (("JOBRUNNER_PROCESSES",), int),
    "shutdown_timeout": (("JOBRUNNER_SHUTDOWN_TIMEOUT",), float),
    "queues": (("JOBRUNNER_QUEUES",), lambda v: parse_queues(v)),
    "sidekiq_fetch": (("JOBRUNNER_SIDEKIQ_FETCH",), str),
    "max_jobs": (("JOBRUNNER_MAX_JOBS",), int),
    "max_rss_mb": (("JOBRUNNER_MAX_RSS_MB",), float),
    "timeout_grace": (("JOBRUNNER_TIMEOUT_GRACE",), float),
    "heartbeat_timeout": (("JOBRUNNER_HEARTBEAT_TIMEOUT",), float),
    "log_level": (("JOBRUNNER_LOG_LEVEL",), str),
    "log_format": (("JOBRUNNER_LOG_FORMAT",), str),
}


def parse_queues(text):
    """``"a,b"`` -> ``["a", "b"]``; empty items are dropped."""
    if isinstance(text, (list, tuple)):
        return list(text)
    return [q.strip() for q in text.split(",") if q.strip()]


def resolve(kwargs=None, flags=None, environ=None):
    """Build ``Settings`` from keyword arguments, then CLI flags, then the environment."""
    environ = os.environ if environ is None else environ
    chosen = {}
    for source in (kwargs or {}, flags or {}):
        for key, value in source.items():
            if value is not None and key not in chosen:
                chosen[key] = value
    for key, (names, convert) in _ENVIRONMENT.items():
        if key in chosen:
            continue
        for name in names:
            if environ.get(name):
                try:
                    chosen[key] = convert(environ[name])
                except ValueError:
                    raise ConfigError(f"{name}={environ[name]!r} is not valid for {key}") from None
                break
    if "queues" in chosen:
        chosen["queues"] = parse_queues(chosen["queues"]) or None
    unknown = set(chosen) - set(attr.fields_dict(Settings))
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
    return Settings(**chosen)

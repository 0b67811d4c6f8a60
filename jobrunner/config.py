"""Supervisor settings: keyword arguments first, then CLI flags, then environment, then defaults."""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import attr

from jobrunner import sentinel_url
from jobrunner.errors import ConfigError
from jobrunner.redact import redact


def _cpu_count():
    return os.cpu_count() or 1


@attr.s(frozen=True, kw_only=True)
class Settings:
    """Every knob of a supervisor, resolved once at start. See README's configuration table."""

    #: libpq DSN or URL for Postgres; None uses libpq's defaults (PGHOST, PGDATABASE, ...).
    pg_dsn: str | None = attr.ib(default=None)
    #: redis-py URL for Redis.
    redis_url: str = attr.ib(default="redis://localhost:6379/0")
    #: children per backend pool.
    processes: int = attr.ib(factory=_cpu_count)
    #: seconds a graceful stop waits for running jobs before it kills and requeues them.
    shutdown_timeout: float = attr.ib(default=25.0)
    #: queues to serve (None: every registered worker's queue), in priority order.
    queues: Sequence[str] | None = attr.ib(default=None)
    #: "reliable" (in-flight list per child, the default) or "basic" (Sidekiq's plain BRPOP).
    sidekiq_fetch: str = attr.ib(default="reliable")
    #: the Ruby Sidekiq sharing the Redis ("6.4", "7.3", "8.1"...): how a job's retry_for
    #: counts and which Metrics keys are written (``backends/sidekiq/versions.py``).
    sidekiq_version: str = attr.ib(default="8.1")
    #: "strict" (first queue first) or "weighted" (random, by weight) queue order.
    queue_order: str = attr.ib(default="strict")
    #: seconds a child waits for work in one fetch before it checks the supervisor's pipe.
    fetch_timeout: float = attr.ib(default=1.0)
    #: jobs a pgmq child reads per round trip.
    pgmq_batch: int = attr.ib(default=1)
    #: "auto" (LISTEN for new jobs unless a pooler is in the way), "on" or "off"; without it
    #: an idle pgmq child reads again every ``fetch_timeout`` seconds.
    pg_listen: str = attr.ib(default="auto")
    #: install pgmq at start when it is missing.
    pgmq_install: bool = attr.ib(default=False)
    #: recycle a child after this many jobs / this RSS in MB (None: never).
    max_jobs: int | None = attr.ib(default=None)
    max_rss_mb: float | None = attr.ib(default=None)
    #: seconds between a child's heartbeats on its pipe, and the silence that gets it killed.
    heartbeat_interval: float = attr.ib(default=1.0)
    heartbeat_timeout: float = attr.ib(default=30.0)
    #: extra seconds past a worker's timeout before the supervisor kills its child.
    timeout_grace: float = attr.ib(default=5.0)
    log_level: str = attr.ib(default="INFO")
    log_format: str = attr.ib(default="text")
    #: free text shown with the process in Sidekiq's UI (its ``tag``).
    tag: str = attr.ib(default="")
    #: dedicated pools: ``PoolSpec``s, or strings ``"critical=2"``, ``"default,low=3:weighted"``
    #: (queues=children[:order]); their queues leave the shared pool (see ``parse_pools``).
    pools: tuple[PoolSpec, ...] = attr.ib(default=(), converter=lambda v: parse_pools(v))
    #: TCP port of the Prometheus ``/metrics`` endpoint (``metrics.py``); None: off; 0: any.
    metrics_port: int | None = attr.ib(default=None)
    #: address the endpoint listens on: loopback unless told otherwise, since it shows queue
    #: names and numbers to whoever can connect; ``0.0.0.0`` or ``::`` for every interface.
    metrics_host: str = attr.ib(default="127.0.0.1")

    def __attrs_post_init__(self) -> None:
        if self.processes < 1:
            raise ConfigError(f"processes must be at least 1, got {self.processes}")
        if self.pgmq_batch < 1:
            raise ConfigError(f"pgmq batch must be at least 1, got {self.pgmq_batch}")
        if self.shutdown_timeout < 0:
            raise ConfigError(f"shutdown timeout must be >= 0, got {self.shutdown_timeout}")
        if self.sidekiq_fetch not in ("reliable", "basic"):
            raise ConfigError(f"sidekiq fetch must be 'reliable' or 'basic', "
                              f"got {self.sidekiq_fetch!r}")
        if not re.match(r"^[678]\.\d+(\.\d+)*$", str(self.sidekiq_version)):
            raise ConfigError(f"sidekiq version must be one such as 6.4, 7.3 or 8.1, "
                              f"got {self.sidekiq_version!r}")
        if self.queue_order not in ("strict", "weighted"):
            raise ConfigError(f"queue order must be 'strict' or 'weighted', "
                              f"got {self.queue_order!r}")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log format must be 'text' or 'json', got {self.log_format!r}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics port must be 0..65535, got {self.metrics_port}")
        if self.max_jobs is not None and self.max_jobs < 1:
            raise ConfigError(f"max jobs must be at least 1 (or unset), got {self.max_jobs}")
        if self.max_rss_mb is not None and not self.max_rss_mb > 0:
            raise ConfigError(f"max rss mb must be above 0 (or unset), got {self.max_rss_mb}")
        if not self.heartbeat_interval > 0:
            raise ConfigError(f"heartbeat interval must be above 0, got "
                              f"{self.heartbeat_interval}")
        if not self.heartbeat_timeout >= 2 * self.heartbeat_interval:
            # Shorter, and a healthy idle child is killed between two of its beats.
            raise ConfigError(f"heartbeat timeout must be at least twice the heartbeat interval "
                              f"({2 * self.heartbeat_interval:g} s), got {self.heartbeat_timeout}")
        if not self.timeout_grace >= 0:
            raise ConfigError(f"timeout grace must be >= 0, got {self.timeout_grace}")
        if self.pg_listen not in PG_LISTEN:
            raise ConfigError(f"pg listen must be one of {', '.join(PG_LISTEN)}, "
                              f"got {self.pg_listen!r}")
        if not self.fetch_timeout >= 0:
            raise ConfigError(f"fetch timeout must be >= 0, got {self.fetch_timeout}")
        if str(self.log_level).upper() not in LOG_LEVELS:
            raise ConfigError(f"log level must be one of {', '.join(LOG_LEVELS)}, "
                              f"got {self.log_level!r}")
        if not str(self.redis_url).startswith(REDIS_SCHEMES):
            raise ConfigError(f"redis url must start with {', '.join(REDIS_SCHEMES)}; got "
                              f"{redact(str(self.redis_url))!r}")
        if sentinel_url.is_sentinel_url(self.redis_url):
            try:
                sentinel_url.parse(self.redis_url)
            except ValueError as exc:
                raise ConfigError(f"redis url {redact(self.redis_url)!r}: {exc}; expected "
                                  f"{sentinel_url.FORMAT}") from None
        if not is_host(self.metrics_host):
            raise ConfigError(f"metrics host must be an IP address or a host name, "
                              f"got {self.metrics_host!r}")


PG_LISTEN = ("auto", "on", "off")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", sentinel_url.SCHEME)


def check_served(settings: Settings, served: Iterable[str]) -> None:
    """Raise ConfigError for a queue named in ``queues`` or ``pools`` that no registered
    worker uses: a typo would otherwise leave that queue's jobs waiting unserved."""
    served = list(dict.fromkeys(served))
    named = [(q, "queues") for q in settings.queues or ()] + [
        (q, "pools") for spec in settings.pools for q in spec.queues]
    for queue, setting in named:
        if queue not in served:
            raise ConfigError(f"{setting}: no registered worker uses queue {queue!r} "
                              f"(the registered queues are {', '.join(served) or 'none'})")


# setting name -> (environment variables in order of preference, converter)
_ENVIRONMENT: dict[str, tuple[tuple[str, ...], Callable[[str], Any]]] = {
    "pg_dsn": (("JOBRUNNER_PG_DSN", "DATABASE_URL"), str),
    "redis_url": (("JOBRUNNER_REDIS_URL", "REDIS_URL"), str),
    "processes": (("JOBRUNNER_PROCESSES",), int),
    "shutdown_timeout": (("JOBRUNNER_SHUTDOWN_TIMEOUT",), float),
    "queues": (("JOBRUNNER_QUEUES",), lambda v: parse_queues(v)),
    "sidekiq_fetch": (("JOBRUNNER_SIDEKIQ_FETCH",), str),
    "sidekiq_version": (("JOBRUNNER_SIDEKIQ_VERSION",), str),
    "max_jobs": (("JOBRUNNER_MAX_JOBS",), int),
    "max_rss_mb": (("JOBRUNNER_MAX_RSS_MB",), float),
    "timeout_grace": (("JOBRUNNER_TIMEOUT_GRACE",), float),
    "heartbeat_timeout": (("JOBRUNNER_HEARTBEAT_TIMEOUT",), float),
    "log_level": (("JOBRUNNER_LOG_LEVEL",), str),
    "log_format": (("JOBRUNNER_LOG_FORMAT",), str),
    "metrics_port": (("JOBRUNNER_METRICS_PORT",), int),
    "metrics_host": (("JOBRUNNER_METRICS_HOST",), str),
    "pools": (("JOBRUNNER_POOLS",), lambda v: parse_pools(v)),
    "pgmq_batch": (("JOBRUNNER_PGMQ_BATCH",), int),
    "pg_listen": (("JOBRUNNER_PG_LISTEN",), str),
}


_HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def is_host(value: object) -> bool:
    """True for an IPv4 or IPv6 address or a DNS host name (``localhost``, ``metrics.internal``)."""
    if not isinstance(value, str) or not value or len(value) > 253:
        return False
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        pass
    labels = value.rstrip(".").split(".")
    # All-numeric labels are a mistyped address (``10.0.0.256``), not a name.
    return (all(_HOST_LABEL.fullmatch(label) for label in labels)
            and not all(label.isdigit() for label in labels))


@attr.s(frozen=True, kw_only=True)
class PoolSpec:
    """A dedicated pool: ``size`` children serving ``queues`` in ``order``."""

    queues: tuple[str, ...] = attr.ib(converter=tuple)
    size: int = attr.ib()
    order: str = attr.ib(default="strict")


def parse_pools(value: str | Iterable[str | PoolSpec] | None) -> tuple[PoolSpec, ...]:
    """Dedicated pools from ``"critical=2"``-style specs: a list of them, or one string of
    them separated by ``;`` or spaces (``JOBRUNNER_POOLS="critical=2;default,low=3:weighted"``).

    Each spec is ``QUEUE[,QUEUE...]=CHILDREN[:strict|weighted]``; a queue may be in one only.
    """
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.replace(";", " ").split()
    specs: list[PoolSpec]
    seen: set[str]
    specs, seen = [], set()
    for item in value:
        spec = item if isinstance(item, PoolSpec) else _parse_pool(str(item))
        if spec.size < 1 or spec.order not in ("strict", "weighted") or not spec.queues:
            raise ConfigError(f"bad pool {item!r}: expected QUEUE[,QUEUE...]=CHILDREN"
                              "[:strict|weighted] with at least one child")
        twice = seen.intersection(spec.queues)
        if twice:
            raise ConfigError(f"queue {sorted(twice)[0]!r} is given to two pools")
        seen.update(spec.queues)
        specs.append(spec)
    return tuple(specs)


def _parse_pool(text):
    queues, equals, rest = text.partition("=")
    size, _, order = rest.partition(":")
    try:
        return PoolSpec(queues=parse_queues(queues), size=int(size) if equals else 0,
                        order=order.strip() or "strict")
    except ValueError:
        raise ConfigError(f"bad pool {text!r}: expected QUEUE[,QUEUE...]=CHILDREN"
                          "[:strict|weighted]") from None


def parse_queues(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]``; empty items are dropped."""
    if isinstance(text, (list, tuple)):
        return list(text)
    return [q.strip() for q in text.split(",") if q.strip()]


def resolve(kwargs: Mapping[str, Any] | None = None, flags: Mapping[str, Any] | None = None,
            environ: Mapping[str, str] | None = None) -> Settings:
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

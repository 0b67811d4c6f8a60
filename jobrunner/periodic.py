"""Cron schedules: parse 5-field or 6-field (leading seconds) expressions and find ticks."""

import datetime

from .errors import ConfigError


def _croniter():
    try:
        import croniter
    except ImportError:
        raise ConfigError("periodic jobs need croniter: pip install 'jobrunner[cron]'") from None
    return croniter.croniter


def _zone(timezone):
    if timezone in (None, "UTC"):
        return datetime.timezone.utc
    from zoneinfo import ZoneInfo
    return ZoneInfo(timezone)


def to_croniter(cron):
    """croniter wants seconds as a trailing 6th field; Roadster writes them first."""
    fields = cron.split()
    if len(fields) == 6:
        return " ".join(fields[1:] + fields[:1])
    return cron


def check_cron(cron, worker_name, timezone="UTC"):
    """Raise ConfigError naming the worker unless ``cron`` is a valid expression."""
    if not isinstance(cron, str) or len(cron.split()) not in (5, 6):
        raise ConfigError(f"{worker_name}: cron must have 5 fields, or 6 with leading "
                          f"seconds; got {cron!r}")
    try:
        _zone(timezone)
    except Exception:
        raise ConfigError(f"{worker_name}: unknown time zone {timezone!r}") from None
    if not _croniter().is_valid(to_croniter(cron)):
        raise ConfigError(f"{worker_name}: invalid cron expression {cron!r}")


def next_tick(cron, after, timezone="UTC"):
    """The first tick of ``cron`` strictly after the aware datetime ``after``."""
    start = after.astimezone(_zone(timezone))
    return _croniter()(to_croniter(cron), start).get_next(datetime.datetime)

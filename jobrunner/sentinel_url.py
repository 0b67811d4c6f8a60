"""``redis+sentinel://`` URLs: which sentinels to ask for which master, and with what options.

    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db][?options]

The hosts are the sentinels (port 26379 when none is given; an IPv6 address in brackets),
``service`` is the master's name in their ``sentinel monitor`` line, ``db`` the database
number (0). The user and password are the master's (and its replicas'), as in a ``redis://``
URL. ``sentinel_username`` and ``sentinel_password`` in the query are the sentinels' own, for
sentinels that have ``requirepass``; ``min_other_sentinels`` makes a sentinel that sees fewer
peers than that be ignored (it may be cut off from the rest). Every other query option is a
redis-py URL option (``socket_timeout``, ``health_check_interval``, ...) for the connections
to the master. The same grammar is used by the Redis-Sentinel-Url and prefect-redis Python
packages, so one URL can serve those tools and jobrunner.

This module only reads the text (no driver): ``config.py`` checks a URL with it at start, the
Redis backend builds its client from what it returns.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import parse_qsl, unquote, urlencode

SCHEME = "redis+sentinel://"
DEFAULT_PORT = 26379
FORMAT = "redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db][?options]"


class SentinelURL(NamedTuple):
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    username: str | None
    password: str | None
    sentinel_username: str | None
    sentinel_password: str | None
    min_other_sentinels: int
    #: the rest of the query, for the master's connections, in redis-py's URL syntax
    options: str


def is_sentinel_url(url: str) -> bool:
    return str(url)[:len(SCHEME)].lower() == SCHEME


def parse(url: str) -> SentinelURL:
    """The parts of a ``redis+sentinel://`` URL; ValueError says what is wrong with it."""
    if not is_sentinel_url(url):
        raise ValueError(f"not a {SCHEME} URL")
    rest, _, query = url[len(SCHEME):].partition("?")
    authority, slash, path = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if not hosts:
        raise ValueError("it names no sentinel host")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = (unquote(user) or None) if colon else None
        password = unquote(secret if colon else user) or None
    service, db = _path(path if slash else "")
    options = dict(parse_qsl(query, keep_blank_values=True))
    return SentinelURL(
        sentinels=tuple(_host(item) for item in hosts.split(",")), service=service, db=db,
        username=username, password=password,
        sentinel_username=options.pop("sentinel_username", None) or None,
        sentinel_password=options.pop("sentinel_password", None) or None,
        min_other_sentinels=_count(options.pop("min_other_sentinels", "0")),
        options=urlencode(options))


def _host(item):
    item = item.strip()
    if item.startswith("["):                      # [::1]:26379
        address, bracket, port = item[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise ValueError(f"bad sentinel host {item!r}")
        host, port = address, port[1:]
    else:
        host, _, port = item.partition(":")
    if not host or any(c.isspace() or c in "/@[]" for c in host):
        raise ValueError(f"bad sentinel host {item!r}")
    if not port:
        return host, DEFAULT_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in sentinel host {item!r}")
    return host, int(port)


def _path(path):
    parts = path.split("/") if path else []
    if len(parts) == 2 and not parts[1]:
        parts.pop()                                # /service/ is /service
    if not parts or not parts[0]:
        raise ValueError("it names no master (the service name after the hosts)")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError(f"the path must be /service or /service/db, got {'/' + path!r}")
    return unquote(parts[0]), int(parts[1]) if len(parts) == 2 else 0


def _count(value):
    if not value.isdigit():
        raise ValueError(f"min_other_sentinels must be a number >= 0, got {value!r}")
    return int(value)

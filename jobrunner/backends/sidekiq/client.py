"""Redis clients for jobrunner's own processes, and what a failed connection says.

Every client a child, the housekeeper, a metrics reader or an operator command uses is made by
``make_client``, so they share the reply decoding, time-outs and TCP keepalive.
"""

import socket
import ssl

import redis
import redis.backoff
import redis.connection
import redis.retry
import redis.sentinel

from jobrunner import sentinel_url
from jobrunner.redact import redact
from jobrunner.backends import timeouts


def make_client(url, socket_timeout, connect_timeout=5.0, **options):
    """A client for ``url`` as jobrunner's own processes use one: text replies that keep
    payload bytes that are not UTF-8 (``surrogateescape``), every command bounded by
    ``socket_timeout``, and TCP keepalive and user timeout (``backends/timeouts.py``), so a
    server that stops answering is noticed even between commands. Settings in the URL's
    query string win over these. A ``redis+sentinel://`` URL gives a client of the master
    its sentinels name (``sentinel_url.py``)."""
    if not url.lower().startswith("unix:"):
        # A Unix socket has no TCP to tune, and redis-py's Unix connection rejects these.
        options.update(socket_keepalive=True, socket_keepalive_options=timeouts.tcp_options())
    options.update(decode_responses=True, encoding_errors="surrogateescape",
                   socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout)
    if sentinel_url.is_sentinel_url(url):
        return _sentinel_master(sentinel_url.parse(url), options)
    return redis.Redis.from_url(url, **options)


class SentinelMaster(redis.Redis):
    """A client of a Sentinel-managed master; ``close`` also closes its connections to the
    sentinels it asked (redis-py's ``Sentinel.close`` is only in 8.1 and later)."""

    def close(self):
        try:
            super().close()
            self.connection_pool.disconnect()     # before 5.0.1 close() leaves the pool open
        finally:
            for asked in self.connection_pool.sentinel_manager.sentinels:
                asked.close()


def _sentinel_master(target, options):
    """Each new connection asks the sentinels where the master is, so a failover is followed:
    a connection to the old master fails, and the next one goes to the promoted replica (one
    to a master demoted to a replica fails too, on its first write)."""
    options.update(db=target.db, username=target.username, password=target.password)
    options.update(redis.connection.parse_url("redis://?" + target.options))  # as from_url
    # A sentinel answers at once or not at all: it gets the connect time-out for each
    # command, not the master's longer one, which must outlast a blocking fetch. And no
    # retries (redis-py's default for a client made by hand, as the sentinels' are, retries
    # with backoff, ten times in 8.x): one sentinel that is down would hold every lookup
    # for seconds while the next one in the list answers, and our callers retry anyway.
    asking = {key: value for key, value in options.items() if key.startswith("socket_")}
    asking.update(socket_timeout=options["socket_connect_timeout"],
                  username=target.sentinel_username, password=target.sentinel_password,
                  retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0))
    manager = redis.sentinel.Sentinel(target.sentinels, sentinel_kwargs=asking,
                                      min_other_sentinels=target.min_other_sentinels)
    return manager.master_for(target.service, redis_class=SentinelMaster, **options)


def failure(url, what, exc):
    """``Redis at <url> <what>: <why>`` for a failed connection, the URL's secrets masked and
    a TLS failure named as one (redis-py reports a TLS handshake that got no answer as a plain
    "Timeout connecting to server")."""
    return f"Redis at {redact(url)} {what}: {_tls_failure(url, exc) or exc}"


def _tls_failure(url, exc):
    seen = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return f"TLS failed: {exc}"
        if isinstance(seen, (TimeoutError, socket.timeout)) and "handshake" in str(seen):
            return "the TLS handshake got no answer (does that port serve TLS?)"
        seen = seen.__cause__ or seen.__context__
    if url.lower().startswith("rediss://") and isinstance(exc, redis.TimeoutError):
        return f"{exc} over TLS"
    return None

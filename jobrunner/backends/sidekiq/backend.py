"""The Sidekiq backend: jobs in Redis in Sidekiq's wire format, shared with Ruby Sidekiq 6.4-8.x.

Roles: ``SidekiqEnqueuer`` writes jobs from web code, ``SidekiqConsumer`` fetches and settles
them in a child, ``SidekiqHousekeeper`` (``sidekiq/housekeeper.py``) heartbeats, promotes due
jobs and recovers orphans, ``SidekiqBackend`` makes them after fork. The JSON rules live in
``sidekiq/payload.py`` and the Lua in ``sidekiq/scripts.py``.

Redis keys (no prefix; ``docs/design.md`` "Sidekiq 6.4 on Redis" has Sidekiq's own):

    queues                   SET   queue names; SADD on every immediate push and promotion
    queue:<q>                LIST  job JSON; producers LPUSH, consumers take from the tail
                                   (BRPOP, or LMOVE/BLMOVE RIGHT->LEFT); RPUSH puts a job back
                                   so it runs next
    schedule                 ZSET  delayed jobs, score = due epoch seconds, no enqueued_at
    retry                    ZSET  failed jobs with Sidekiq's error fields, score = next run
    dead                     ZSET  jobs out of retries, score = time of death; trimmed on every
                                   insert to 180 days and 9,999 entries, as Sidekiq does
    stat:processed, stat:failed              counters (INCRBY)
    stat:processed:<UTC date>, stat:failed:<UTC date>   daily counters, EXPIRE 5 years
    processes                SET   identities of live supervisors (and Ruby processes)
    <identity>               HASH  heartbeat: info, concurrency, busy, beat, rtt_us, quiet, rss;
                                   EXPIRE 60 (``sidekiq/heartbeat.py``)
    <identity>:workers       HASH  one field per busy child -> {"queue","payload","run_at"}
    <identity>:work          HASH  the same, where 7.0 and later read it
    j|..., h|..., <class>-...      per-class metrics of Sidekiq 7.x/8.x (``sidekiq/metrics.py``)
    <identity>-signals       LIST  remote TSTP/TERM/TTIN pushed by Sidekiq's API/Web UI
    jobrunner:inflight:<child_id>  LIST  ours: jobs a child holds (reliable fetch), newest at
                                   the head, exact raw strings; the job stays in Redis from
                                   fetch until it is settled
    jobrunner:inflight       SET   ours: every in-flight list key, so recovery can find them
    jobrunner:metrics:<identity>  HASH  ours: the metrics already added (``sidekiq/metrics.py``)
    jobrunner:paused         SET   ours: paused queue names (``sidekiq/control.py``); consumers
                                   read it every PAUSE_CHECK_SECONDS and skip those queues

``child_id`` is ``"<identity>:<child pid>"``; the owner of an in-flight list is its identity
(everything before the last ``:``), whose heartbeat hash tells whether it is alive.

Where we differ from Sidekiq OSS, on purpose:

- Reliable fetch is the default (``sidekiq_fetch="basic"`` is Sidekiq's BRPOP): a job stays
  in Redis until settled, and a settle step is skipped if recovery already took the job.
- The poller removes a due entry and pushes it in one Lua step; Sidekiq's ZREM and LPUSH are
  separate, so a crash between them loses the job there.
- JSON that is not an object, or has no ``class``, goes to ``dead`` wrapped as a
  ``jobrunner.InvalidPayload`` job hash (the raw text is its one argument) so Sidekiq's dead
  set can show it; Sidekiq loses such payloads. Invalid JSON goes to ``dead`` raw, as in Sidekiq.
- A job whose child died counts as a failed attempt (``error_class`` ``jobrunner.ChildDied``).
"""

import redis

from jobrunner.errors import BackendUnavailable
from jobrunner.redact import redact
from jobrunner.backends.base import Backend
from jobrunner.backends.sidekiq.client import failure, make_client
from jobrunner.backends.sidekiq.consumer import SidekiqConsumer
from jobrunner.backends.sidekiq.enqueue import SidekiqEnqueuer
from jobrunner.backends.sidekiq.payload import DEFAULT_MAX_RETRIES
from jobrunner.backends.sidekiq.versions import SidekiqVersion

__all__ = ["DEFAULT_MAX_RETRIES", "SidekiqBackend", "SidekiqConsumer", "SidekiqEnqueuer"]

#: Extra socket time beyond the longest blocking fetch, so a dead server is noticed.
SOCKET_MARGIN = 10.0


class SidekiqBackend(Backend):
    """Makes Sidekiq consumers and the housekeeper, each over its own new connection."""

    name = "sidekiq"
    setting = "redis_url"
    # A server that is full (maxmemory with noeviction) or read-only (a replica, mid-failover)
    # is an outage like a lost connection: children back off and retry, nothing gives up.
    connection_errors = (redis.ConnectionError, redis.TimeoutError,
                         redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError)

    def _client(self, socket_timeout=5.0):
        return make_client(self.settings.redis_url, socket_timeout, health_check_interval=30)

    def consumer(self, queues, child_id, acks=None):
        queues = queues or self.settings.queues or self.registry.queues("sidekiq")
        max_block = max(float(self.settings.fetch_timeout), 1.0)
        return SidekiqConsumer(self._client(max_block + SOCKET_MARGIN), queues, child_id,
                               fetch=self.settings.sidekiq_fetch,
                               order=self.settings.queue_order, max_block=max_block, acks=acks,
                               version=self.sidekiq_version)

    def housekeeper(self, identity):
        from jobrunner.backends.sidekiq.housekeeper import SidekiqHousekeeper
        return SidekiqHousekeeper(self._client(), identity, registry=self.registry,
                                  version=self.sidekiq_version)

    @property
    def sidekiq_version(self):
        """The ``SidekiqVersion`` of the Ruby peers (the ``sidekiq_version`` setting)."""
        return SidekiqVersion.parse(self.settings.sidekiq_version)

    def check(self):
        client = self._client()
        try:
            client.ping()
            return self.health(client)["warnings"]
        except redis.RedisError as exc:
            raise BackendUnavailable(failure(self.settings.redis_url, "is not usable",
                                             exc)) from None
        finally:
            client.close()

    def health(self, client):
        """The server's version and the warnings ``redis_warnings`` finds."""
        server, memory = client.info("server"), client.info("memory")
        return {"version": str(server.get("redis_version")),
                "warnings": redis_warnings(server, memory, self.settings.sidekiq_fetch,
                                           redact(self.settings.redis_url))}

    def inspector(self, timeout=5.0, purpose="jobrunner-admin", bounded=False):
        # Every command is bounded anyway: the client's socket timeout is ``timeout``.
        from jobrunner.backends.sidekiq.inspector import SidekiqInspector, client
        conn = client(self.settings.redis_url, timeout=timeout)
        try:
            conn.ping()
        except Exception as exc:    # redis-py raises several families for a bad URL or server
            conn.close()
            raise BackendUnavailable(failure(self.settings.redis_url, "is unreachable",
                                             exc)) from None
        return SidekiqInspector(conn, self.health)


def redis_warnings(server, memory, fetch, where):
    """Warnings for settings that risk losing jobs or versions that lack what we use."""
    warnings = []
    policy = memory.get("maxmemory_policy", "noeviction")
    if policy != "noeviction":
        warnings.append(f"Redis at {where} has maxmemory-policy {policy}: it may evict jobs; "
                        "set it to noeviction")
    version = str(server.get("redis_version", "0"))
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts < (6, 2):
        need = " (reliable fetch needs LMOVE/BLMOVE; use sidekiq_fetch='basic')" \
            if fetch == "reliable" else ""
        warnings.append(f"Redis at {where} is version {version}, older than 6.2{need}")
    return warnings

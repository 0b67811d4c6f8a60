"""Enqueue on Redis exactly as Sidekiq's client does: one LPUSH, or one ZADD for later."""

from __future__ import annotations

import numbers
import time
import weakref
from typing import ClassVar

from jobrunner.errors import ConfigError, NotReplicated
from jobrunner.job import TRACE_FIELD
from jobrunner.backends.base import Enqueuer
from jobrunner.backends.sidekiq.payload import client_payloads, queue_key


class SidekiqEnqueuer(Enqueuer):
    """Writes jobs exactly as Sidekiq's client does: ``worker.enqueuer = SidekiqEnqueuer``.

    Sidekiq's client adds the queue to the ``queues`` set on every push. That set only tells
    the Web UI and ``stats`` which queues exist (fetching never reads it), so we add it once per
    connection pool and queue every ``ANNOUNCE_INTERVAL`` seconds: a single push is then one
    LPUSH. A queue cleared in the Web UI (which removes it from the set) shows again within
    that interval of the next push.

    ``SidekiqEnqueuer.durable(replicas=1)`` is the same writer, but each push also waits for
    replicas to confirm it (see ``durable``).
    """

    backend = "sidekiq"
    #: Replicas that must confirm each push before it returns (Redis ``WAIT``); 0: none.
    replicas: ClassVar[int] = 0
    #: Seconds the master waits for them.
    replica_timeout: ClassVar[float] = 1.0

    @classmethod
    def durable(cls, replicas: int = 1, timeout: float = 1.0) -> type[SidekiqEnqueuer]:
        """An enqueuer whose pushes also send ``WAIT replicas timeout`` in the same round
        trip, and raise ``jobrunner.NotReplicated`` when fewer replicas confirmed the jobs
        within ``timeout`` seconds. Redis replicates asynchronously: without this, a push
        the master acknowledged can vanish in a failover. The caller's client must allow
        ``timeout`` (its ``socket_timeout`` longer), or a slow confirmation is a
        ``redis.TimeoutError``, after which the jobs may or may not exist, as with any
        time-out."""
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise ConfigError(f"durable enqueue: replicas must be an int >= 1, got {replicas!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) \
                or not timeout > 0:
            # WAIT 0 would block until the replicas answer, however long that is.
            raise ConfigError(f"durable enqueue: timeout must be seconds > 0, got {timeout!r}")
        return type(f"Durable{cls.__name__}", (cls,),
                    {"replicas": replicas, "replica_timeout": float(timeout),
                     "__doc__": f"{cls.__name__} waiting for {replicas} replica(s)."})

    @classmethod
    def push(cls, worker, conn, encoded_args, at=None, carrier=None):
        """LPUSH the jobs (with SADD ``queues`` when due), or one ZADD to ``schedule``, and a
        durable enqueuer's WAIT; one round trip; returns the jids."""
        if not encoded_args:
            return []
        now = time.time()
        immediate = at is None or float(at) <= now
        jids, payloads = client_payloads(worker, encoded_args, now, enqueued=immediate,
                                         extra={TRACE_FIELD: carrier} if carrier else None)
        seen = _announced_queues(conn) if immediate else {}
        announce = immediate and (time.monotonic() - seen.get(worker.queue, -ANNOUNCE_INTERVAL)
                                  >= ANNOUNCE_INTERVAL)
        if not announce and not cls.replicas:
            _write(conn, worker.queue, payloads, None if immediate else float(at))
            return jids
        pipe = conn.pipeline(transaction=False)
        if announce:
            pipe.sadd("queues", worker.queue)
        _write(pipe, worker.queue, payloads, None if immediate else float(at))
        if cls.replicas:
            pipe.wait(cls.replicas, max(1, round(cls.replica_timeout * 1000)))
        replies = pipe.execute()
        if announce:
            seen[worker.queue] = time.monotonic()
        if cls.replicas and replies[-1] < cls.replicas:
            raise NotReplicated(
                f"{worker.name}: {len(jids)} job(s) reached the Redis master but "
                f"{replies[-1]} of {cls.replicas} replica(s) confirmed them within "
                f"{cls.replica_timeout:g}s: they are on the master only, lost if it fails "
                "before a replica has them; enqueueing them again may run them twice",
                jids, replies[-1], cls.replicas)
        return jids


def _write(conn, queue, payloads, at):
    """One LPUSH with the jobs in order (the first one at the tail, popped first), or one
    ZADD of them to ``schedule`` at ``at``."""
    if at is None:
        conn.lpush(queue_key(queue), *payloads)
    else:
        conn.zadd("schedule", dict.fromkeys(payloads, at))


#: Seconds between two SADDs of one queue to ``queues`` from one connection pool.
ANNOUNCE_INTERVAL = 5.0
_announced = weakref.WeakKeyDictionary()    # connection pool -> {queue: monotonic time}


def _announced_queues(conn):
    """``{queue: when it was last added to queues}`` for the pool behind ``conn``; a fresh dict
    (so: add every time) for a client without a pool we can key on."""
    try:
        return _announced.setdefault(conn.connection_pool, {})
    except (AttributeError, TypeError):
        return {}

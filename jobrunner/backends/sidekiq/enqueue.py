"""Enqueue on Redis exactly as Sidekiq's client does: one LPUSH, or one ZADD for later."""

import time
import weakref

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
    """

    backend = "sidekiq"

    @classmethod
    def push(cls, worker, conn, encoded_args, at=None, carrier=None):
        """LPUSH the jobs (with SADD ``queues`` when due), or one ZADD to ``schedule``;
        one round trip; returns the jids."""
        if not encoded_args:
            return []
        now = time.time()
        immediate = at is None or float(at) <= now
        jids, payloads = client_payloads(worker, encoded_args, now, enqueued=immediate,
                                         extra={TRACE_FIELD: carrier} if carrier else None)
        if not immediate:
            conn.zadd("schedule", dict.fromkeys(payloads, float(at)))
            return jids
        # One LPUSH with the jobs in order: the first one is at the tail, popped first.
        key = queue_key(worker.queue)
        seen = _announced_queues(conn)
        if time.monotonic() - seen.get(worker.queue, -ANNOUNCE_INTERVAL) < ANNOUNCE_INTERVAL:
            conn.lpush(key, *payloads)
        else:
            pipe = conn.pipeline(transaction=False)
            pipe.sadd("queues", worker.queue)
            pipe.lpush(key, *payloads)
            pipe.execute()
            seen[worker.queue] = time.monotonic()
        return jids


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

"""Operator controls on Redis: paused queues, purging a queue, quiet/stop for a supervisor.

Keys:
    jobrunner:paused    SET   ours: names of the paused queues. Every jobrunner consumer reads
                              it (SMEMBERS) at most every ``PAUSE_CHECK_SECONDS`` and fetches
                              from its other queues only. Ruby Sidekiq OSS processes do not
                              read it, as they do not honour Sidekiq Pro's pause either: a
                              queue that Ruby processes also serve goes on running there.
    <identity>-signals  LIST  Sidekiq's: ``TSTP`` (quiet) or ``TERM`` (stop), LPUSHed with a
                              60 s expiry as its ``Process#quiet!``/``stop!`` do; the
                              housekeeper of ``<identity>`` RPOPs it at every tick.
"""

from jobrunner.backends.inspector import PROCESS_SIGNALS, QUEUE_ACTIONS
from jobrunner.backends.sidekiq.payload import queue_key

PAUSED_KEY = "jobrunner:paused"
#: Seconds a signal waits for its process, as in Sidekiq.
SIGNAL_TTL = 60

#: Signal a process only while it is alive, in one step: a stopped one has left the
#: ``processes`` set (its hash stays until it expires, 60 s after its last beat), and a
#: signal pushed then would wait for nobody.
#: KEYS[1] the process hash, KEYS[2] its signals list, KEYS[3] ``processes``; ARGV[1] the
#: signal, ARGV[2] the TTL, ARGV[3] the identity. Returns 1 when pushed, 0 when it is gone.
SIGNAL = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('SISMEMBER', KEYS[3], ARGV[3]) == 0 then
  return 0
end
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""


def paused_queues(conn):
    return sorted(conn.smembers(PAUSED_KEY))


def queue_action(conn, action, queue):
    """``Inspector.queue_action``: pause, resume or purge ``queue``, in one transaction."""
    if action not in QUEUE_ACTIONS:
        raise ValueError(f"no queue action {action!r}; one of {QUEUE_ACTIONS}")
    pipe = conn.pipeline(transaction=True)
    if action == "pause":
        pipe.sadd(PAUSED_KEY, queue)
    elif action == "resume":
        pipe.srem(PAUSED_KEY, queue)
    else:
        # Sidekiq's Queue#clear also removes the name from ``queues``. We keep it: purging
        # deletes the jobs, not the queue, which processes still serve and which a paused
        # queue must go on showing in ``stats`` and the Web UI (a push re-adds a name only
        # every few seconds per client, so the queue would blink out of sight meanwhile).
        pipe.llen(queue_key(queue))
        pipe.unlink(queue_key(queue))
    pipe.sismember(PAUSED_KEY, queue)
    replies = pipe.execute()
    return {"queue": queue, "action": action, "paused": bool(replies[-1]),
            "purged": replies[0] if action == "purge" else None}


def signal(conn, identity, action):
    """``Inspector.signal``: True when ``identity`` is alive and got the signal."""
    if action not in PROCESS_SIGNALS:
        raise ValueError(f"no process signal {action!r}; one of {tuple(PROCESS_SIGNALS)}")
    script = conn.register_script(SIGNAL)
    return bool(script(keys=[identity, f"{identity}-signals", "processes"],
                       args=[PROCESS_SIGNALS[action], SIGNAL_TTL, identity]))

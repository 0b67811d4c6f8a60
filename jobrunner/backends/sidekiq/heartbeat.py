"""The process heartbeat's JSON, as Sidekiq 6.4, 7.x and 8.x all read it: ``info``, running jobs.

``housekeeper.py`` writes these with the rest of the heartbeat (``backend.py`` lists the keys);
``inspector.py`` and ``lookup.py`` read Ruby processes of any of the three versions back.
"""

from jobrunner.version import __version__
from jobrunner.backends.queue_order import normalize_queues
from jobrunner.backends.sidekiq.payload import encode


def process_info(state, identity):
    """The ``info`` JSON of a process hash, from a ``SupervisorState``: what 6.4 reads, plus
    what 7.x and 8.x read (``version``, shown on the Busy page; ``embedded: false``, without
    which their API refuses to quiet or stop it; ``weights``, and ``capsules``, from which 8.x
    takes the queues). jobrunner's pools are one capsule, ``"default"``, as Sidekiq's are
    when an app declares no other."""
    weights = {}
    for name, weight in normalize_queues(state.queues or ()):
        weights.setdefault(name, weight)
    capsule = {"concurrency": int(state.concurrency), "mode": capsule_mode(weights),
               "weights": weights}
    return encode({"hostname": state.hostname, "started_at": float(state.started_at),
                   "pid": int(state.pid), "tag": state.tag or "",
                   "concurrency": int(state.concurrency), "capsules": {"default": capsule},
                   "queues": list(weights), "weights": [weights], "labels": [],
                   "identity": identity, "version": f"jobrunner {__version__}",
                   "embedded": False})


def capsule_mode(weights):
    """Sidekiq's name for a capsule's queue order: every weight 0 is ``strict``, every
    weight 1 ``random``, anything else ``weighted``."""
    if all(weight == 0 for weight in weights.values()):
        return "strict"
    return "random" if all(weight == 1 for weight in weights.values()) else "weighted"


#: ``jobrunner:beaten:<identity>``: the supervisor has beaten at least once (kept a day; see
#: FETCH_FIRST in scripts.py for why its children then need the heartbeat to fetch).
BEATEN_PREFIX = "jobrunner:beaten:"
BEATEN_TTL = 24 * 3600


def beaten_key(identity):
    return BEATEN_PREFIX + identity


def work_keys(identity):
    """The hashes of a process's running jobs: 6.4 reads ``<identity>:workers``, 7.0 and later
    ``<identity>:work``; both hold the same fields (``work_entry``)."""
    return (f"{identity}:workers", f"{identity}:work")


def work_entry(queue, payload, run_at):
    """One value of a running-job hash (``work_keys``): ``payload`` is the raw job JSON kept
    as a string, ``run_at`` whole epoch seconds, as every version writes and reads them."""
    return encode({"queue": queue, "payload": payload, "run_at": int(run_at)})


def stand_in_payload(running):
    """A job JSON for a busy job whose raw payload is not in Redis (basic fetch)."""
    return encode({"class": running.worker, "args": [], "queue": running.queue,
                   "jid": running.job_id})

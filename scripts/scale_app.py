"""No-op workers for ``scripts/scale.py``: one queue, or many queues served by one pool.

Environment: SCALE_BACKEND ("pgmq" or "sidekiq"), SCALE_QUEUES (how many queues the ``many``
registry has, named q000, q001, ...).
"""

import os

import jobrunner

QUEUE_COUNT = int(os.environ.get("SCALE_QUEUES", "200"))


def workers(backend, queues=QUEUE_COUNT):
    """(the one-queue worker, the many-queue workers) of ``backend``."""
    enqueuer = jobrunner.SidekiqEnqueuer if backend == "sidekiq" else jobrunner.PgEnqueuer

    def noop(name, queue):
        return type(name, (jobrunner.Worker,), {"enqueuer": enqueuer, "queue": queue,
                                                "handle": lambda self, args: None})
    return noop("Noop", "scale"), [noop(f"Noop{n:03d}", f"q{n:03d}") for n in range(queues)]


def registry(*made):
    made_registry = jobrunner.Registry()
    for worker in made:
        made_registry.register(worker)
    return made_registry


_one, _many = workers(os.environ.get("SCALE_BACKEND", "pgmq"))
one = registry(_one)
many = registry(*_many)

"""Middleware: user hooks around every job a child runs, on either backend.

A middleware is any object with some of these methods, registered with
``registry.add_middleware(obj)``; one copy lives in each child (it is made before the fork)::

    before(job)              just before ``handle``, inside the job's timeout. Raising fails
                             the run like an exception from ``handle`` (retried, then dead),
                             and ``handle`` is not called.
    on_error(job, error)     the run failed: ``error`` is the exception raised by ``handle``
                             (or a ``before``), called while it is being handled, so
                             ``sys.exc_info()`` and error reporters work. Not called for
                             ``jobrunner.Retry``, which is not an error.
    after(job, outcome)      the run is over; ``outcome`` is a ``jobrunner.job.Outcome``
                             (DONE, RETRY, DEAD, DISCARDED, REQUEUED at shutdown, or ERROR
                             when settling it failed because the backend went away: the
                             job runs again later). Called for every run ``before`` began.

Order is an onion: ``before`` in registration order, ``on_error`` and ``after`` in reverse, and
only for the middleware whose ``before`` ran (or that have none). An exception raised by
``on_error`` or ``after`` is logged and ignored: it cannot change how the job was settled.
Jobs that never reach a worker (unknown worker name, unreadable payload) skip middleware.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Iterable, Sequence, TypeVar

from jobrunner.errors import ConfigError

if TYPE_CHECKING:
    from jobrunner.job import Job, Outcome

log = logging.getLogger("jobrunner.middleware")

HOOKS = ("before", "after", "on_error")

_M = TypeVar("_M")


def check_middleware(obj: _M) -> _M:
    """Raise ConfigError unless ``obj`` is an instance with at least one callable hook."""
    if isinstance(obj, type):
        raise ConfigError(f"add_middleware() takes an instance, got the class {obj.__name__}; "
                        f"use add_middleware({obj.__name__}())")
    if not any(callable(getattr(obj, hook, None)) for hook in HOOKS):
        raise ConfigError(f"{obj!r} is not a middleware: it has none of the methods "
                        f"{', '.join(HOOKS)}")
    return obj


class MiddlewareChain:
    """Calls the hooks of a list of middleware around one job at a time."""

    def __init__(self, middleware: Iterable[object] = ()):
        self.items = list(middleware)

    def __bool__(self) -> bool:
        return bool(self.items)

    def before(self, job: Job, entered: list[object]) -> None:
        """Call each ``before`` in order, appending to ``entered`` those that passed.

        An exception propagates (the run fails) after ``entered`` holds the ones before it.
        """
        for item in self.items:
            hook = getattr(item, "before", None)
            if hook is not None:
                hook(job)
            entered.append(item)

    def on_error(self, entered: Sequence[object], job: Job, error: BaseException) -> None:
        self._call_each(reversed(entered), "on_error", job, error)

    def after(self, entered: Sequence[object], job: Job, outcome: Outcome) -> None:
        self._call_each(reversed(entered), "after", job, outcome)

    @staticmethod
    def _call_each(items, name, job, value):
        for item in items:
            hook = getattr(item, name, None)
            if hook is None:
                continue
            try:
                hook(job, value)
            except Exception:
                log.exception("middleware %s.%s failed for job %s",
                              type(item).__name__, name, job.id)

"""The pgmq backend: jobs in Postgres, in pgmq's tables, enqueued in the caller's transaction.

This package's own module is driver-free: importing it only tells registries the backend's
name and its queue-name rule. The driver is imported by the modules that talk to Postgres.
"""

import re

from jobrunner import registry
from jobrunner.errors import ConfigError

NAME = "pgmq"
# pgmq folds names to lower case and refuses $ ; -- ' and names over 47 characters; we accept
# the plain subset so that table names, NOTIFY channels and logs never need quoting.
_QUEUE_NAME = re.compile(r"^[a-z0-9_][a-z0-9_-]{0,46}$")


def check_queue_name(queue: str, worker_name: str = "queue") -> None:
    """Raise ConfigError unless ``queue`` is a name pgmq stores unchanged."""
    if not isinstance(queue, str) or not _QUEUE_NAME.match(queue) or "--" in queue:
        raise ConfigError(
            f"{worker_name}: queue {queue!r} is not a valid pgmq queue name: use at most 47 "
            "characters of lower-case letters, digits, '_' and '-'")


registry.add_backend(NAME, check_queue_name)

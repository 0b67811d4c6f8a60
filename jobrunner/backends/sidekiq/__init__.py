"""The Sidekiq backend: jobs in Redis in Sidekiq's wire format, shared with Ruby Sidekiq.

This package's own module is driver-free: importing it only tells registries the backend's
name. The driver is imported by the modules that talk to Redis.
"""

from jobrunner import registry

NAME = "sidekiq"


def check_queue_name(queue: str, worker_name: str = "queue") -> None:
    """Sidekiq takes any queue name, so there is nothing to refuse."""


registry.add_backend(NAME, check_queue_name)

"""Python side of the example: workers for `jobrunner run workers:registry`, and an enqueuer.

    jobrunner run workers:registry      # runs Greet jobs from the "python" queue
    python workers.py NAME...           # enqueues ThankYou jobs for Ruby's Sidekiq

Redis: ``JOBRUNNER_REDIS_URL`` or ``REDIS_URL`` (as for Sidekiq), else redis://localhost:6379/0.
"""

import json
import os
import sys

import redis

import jobrunner

LOG = "interop_example:log"      # a Redis list both sides append to, to show what ran


def redis_url():
    return (os.environ.get("JOBRUNNER_REDIS_URL") or os.environ.get("REDIS_URL")
            or "redis://localhost:6379/0")


class ThankYou(jobrunner.Worker):
    """The Ruby class of jobs.rb, seen from Python: only enqueued here, run by Sidekiq.

    It is not registered, so our supervisor never fetches from the "ruby" queue.
    """

    enqueuer = jobrunner.SidekiqEnqueuer
    queue = "ruby"

    def handle(self, args):
        raise NotImplementedError("ThankYou runs in Ruby (jobs.rb)")


class Greet(jobrunner.Worker):
    """Run by jobrunner; Ruby enqueues it (enqueue_for_python.rb). It thanks back in Ruby."""

    enqueuer = jobrunner.SidekiqEnqueuer
    queue = "python"

    def __init__(self):
        self.redis = redis.Redis.from_url(redis_url())     # per child, after the fork

    def handle(self, args):
        self.redis.rpush(LOG, json.dumps({"ran": "python Greet", "args": args}))
        # Python enqueues for Ruby: an ordinary Sidekiq job for the Ruby class ThankYou.
        ThankYou.enqueue(self.redis, {"name": args["name"], "from": "python"})


registry = jobrunner.Registry()
registry.register(Greet)


def main(names):
    conn = redis.Redis.from_url(redis_url())
    for name in names or ["Grace"]:
        job_id = ThankYou.enqueue(conn, {"name": name, "from": "python"})
        print(f"enqueued ThankYou({name}) for Ruby: {job_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

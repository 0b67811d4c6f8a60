"""When a worker child asks to be replaced, and the reason it logs: max_jobs or max_rss_mb."""

import os
import random

from jobrunner.process import proc


def recycle_reason(jobs_done, job_limit, settings):
    """Why this child should be replaced now, or None.

    ``job_limit``: this child's share of ``settings.max_jobs`` (max_jobs plus its jitter), or
    None; ``settings.max_rss_mb``: the resident memory above which it goes.
    """
    if job_limit is not None and jobs_done >= job_limit:
        return (f"max_jobs reached: ran {jobs_done} job(s) (max_jobs {settings.max_jobs}, "
                f"{job_limit} for this child with its jitter)")
    rss_limit = settings.max_rss_mb
    if rss_limit is not None:
        rss_mb = proc.rss_kb(os.getpid()) / 1024
        if rss_mb > rss_limit:
            return (f"RSS {rss_mb:.1f} MB is above the max_rss_mb limit of {rss_limit:g} MB "
                    f"(after {jobs_done} job(s))")
    return None


def jittered(limit):
    """Spread recycling: each child stops somewhere in [limit, limit * 1.1]."""
    if not limit:
        return None
    return limit + random.randint(0, max(1, limit // 10))

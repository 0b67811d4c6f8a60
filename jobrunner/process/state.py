"""What the supervisor knows about its children, as handed to each backend's housekeeper."""

import attr


@attr.s(frozen=True, kw_only=True, slots=True)
class RunningJob:
    """A job a child reported as started and not yet finished."""

    child_id = attr.ib()
    job_id = attr.ib()
    worker = attr.ib()
    queue = attr.ib()
    started_at = attr.ib()      # epoch seconds
    token = attr.ib(default=None)

    @classmethod
    def of(cls, record):
        """The job a supervisor's child record shows running (its batch entry)."""
        job = record.running
        return cls(child_id=record.child_id, job_id=job.id, worker=job.worker,
                   queue=job.queue, started_at=record.running_epoch, token=job.token)


@attr.s(frozen=True, kw_only=True, slots=True)
class SupervisorState:
    """A snapshot sent to a housekeeper about once a second."""

    identity = attr.ib()          # "<hostname>:<pid>:<12 hex>", Sidekiq's process identity
    hostname = attr.ib()
    pid = attr.ib()
    started_at = attr.ib()
    queues = attr.ib()            # queues this supervisor serves on the housekeeper's backend
    concurrency = attr.ib()       # children in the backend's pools
    quiet = attr.ib(default=False)
    busy = attr.ib(factory=tuple)  # RunningJob of this backend
    children = attr.ib(factory=tuple)  # child_id of every live child of this backend
    tag = attr.ib(default="")
    # minute epoch -> (processed, failed): this supervisor's runs settled on this backend in
    # each recent minute, totals so far (``process/history.py``)
    settled = attr.ib(factory=dict)
    # minute epoch -> {worker: [processed, failed, ms, duration buckets]}: the same per worker
    # class (``ClassCounts``), for per-class metrics
    classes = attr.ib(factory=dict)

    @classmethod
    def of_pools(cls, pools, **fields):
        """The snapshot of one backend's ``pools`` (the owner first); ``fields`` are the
        supervisor's own (identity, hostname, pid, started_at, quiet, tag, settled, classes)."""
        children = [r for p in pools for r in p.children.values()]
        return cls(queues=[q for p in pools for q in p.queues],
                   concurrency=sum(p.size for p in pools),
                   busy=tuple(RunningJob.of(r) for r in children if r.running),
                   children=tuple(r.child_id for r in children), **fields)

    def as_dict(self):
        return attr.asdict(self, recurse=True)

    @classmethod
    def from_dict(cls, data):
        data = dict(data)
        data["busy"] = tuple(RunningJob(**job) for job in data.get("busy", ()))
        data["queues"] = list(data["queues"])
        data["children"] = tuple(data.get("children", ()))
        # JSON made the minutes strings and the pairs lists
        data["settled"] = {int(minute): (int(counts[0]), int(counts[1]))
                           for minute, counts in data.get("settled", {}).items()}
        data["classes"] = {int(minute): workers
                           for minute, workers in data.get("classes", {}).items()}
        return cls(**data)

"""Memory upkeep for one supervisor: settle what a stopped child held, fire periodic schedules,
keep its heartbeat and its runs per minute."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from jobrunner.job import crash_error, encode_args
from jobrunner.lifecycle import Bury, RetryLater, after_failure
from jobrunner.retry import exponential_delay
from jobrunner.schedule import Planner, Schedule, schedules_for
from jobrunner.backends.base import Housekeeper, SupervisorSnapshot
from jobrunner.backends.memory.consumer import error_record
from jobrunner.backends.memory.enqueue import MemoryEnqueuer
from jobrunner.backends.memory.payload import job_of
from jobrunner.backends.memory.store import NAME, MemoryStore, Message, Receipt

if TYPE_CHECKING:
    from jobrunner.registry import Registry


def receipts_of(tokens: Iterable[Any]) -> set[Receipt]:
    """The deliveries named by ``StoreConsumer.token`` values; others are ignored."""
    return {(t["msg_id"], t["lease"]) for t in tokens or ()
            if isinstance(t, dict) and "msg_id" in t and "lease" in t}


class MemoryHousekeeper(Housekeeper):
    """Recovers the jobs of stopped children and fires this supervisor's periodic schedules.

    Due delayed and retried jobs need no poller: the store makes them visible by time.
    """

    def __init__(self, store: MemoryStore, identity: str, registry: Registry | None = None):
        self.store = store
        self.identity = identity
        self.registry = registry
        self.periodic = MemoryPeriodic(store, schedules_for(registry, NAME))

    def tick(self, state: SupervisorSnapshot) -> list[str]:
        if not state.quiet:     # quiet stops enqueueing, as on the other backends
            self.periodic.tick()
        self.store.record_settled(self.identity, state.settled)
        with self.store.lock:
            self.store.processes[self.identity] = heartbeat(state, self.store.clock())
            return self.store.signals.pop(self.identity, [])

    def record_counts(self, state: SupervisorSnapshot) -> None:
        self.store.record_settled(self.identity, state.settled)

    def close(self) -> None:
        with self.store.lock:
            self.store.processes.pop(self.identity, None)
            self.store.signals.pop(self.identity, None)

    def recover(self, child_id: str, tokens: Sequence[Any], crashed: bool,
                reason: str | None = None, held: Sequence[Any] = (),
                finished: Sequence[Mapping[str, Any]] = ()) -> None:
        """Settle every job child ``child_id`` still leases (see ``Housekeeper.recover``).

        Succeeded jobs (``finished``) are acked. After a crash, the running jobs (``tokens``)
        count a failed attempt. All the rest goes back unchanged, in fetch order. A job
        settled since is not leased by the child any more, so it is left alone.
        """
        running = receipts_of(tokens)
        succeeded = receipts_of(entry.get("token") for entry in finished if entry)
        back = []
        for message in self.store.held_by(child_id):
            receipt = (message.msg_id, message.lease)
            if receipt in succeeded:
                self.store.ack([receipt])
            elif crashed and receipt in running:
                self._fail(message, receipt, reason)
            else:
                back.append(receipt)
        self.store.requeue(back)

    def _fail(self, message: Message, receipt: Receipt, reason: str | None) -> None:
        """The crashed run counts as a failed attempt: retry, bury or drop, as a child would."""
        job = job_of(message)
        worker = self.registry.lookup(job.worker_name) \
            if self.registry is not None and job.worker_name else None
        error = error_record(crash_error(reason))
        decision = after_failure(job, worker, exponential_delay)
        if isinstance(decision, RetryLater):
            self.store.retry(receipt, decision.delay, error)
        elif isinstance(decision, Bury):
            self.store.bury(receipt, error)
        else:
            self.store.discard(receipt)


def heartbeat(state: SupervisorSnapshot, now: float) -> dict:
    """What the store keeps of a supervisor: ``Inspector.processes``' fields, with the
    msg_id of each running job for its args."""
    running = [{"child": job.child_id, "queue": job.queue, "worker": job.worker,
                "job_id": job.job_id, "run_at": job.started_at,
                "msg_id": job.token.get("msg_id") if isinstance(job.token, dict) else None}
               for job in state.busy]
    return {"identity": state.identity, "hostname": state.hostname, "pid": state.pid,
            "tag": state.tag, "started_at": state.started_at, "beat": now,
            "quiet": bool(state.quiet), "busy": len(running),
            "concurrency": state.concurrency, "queues": list(state.queues), "rss_kb": None,
            "rtt_us": None, "running": running}


class MemoryPeriodic:
    """Claims each due (schedule, tick) once in the store and enqueues its job."""

    def __init__(self, store: MemoryStore, schedules: Iterable[Schedule]):
        self.store = store
        self.planner = Planner(schedules)

    def tick(self) -> None:
        if not self.planner.schedules:
            return
        now = self.store.clock()
        if self.planner.refresh_due(now):
            described = {s.key: s.describe() for s in self.planner.schedules}
            self.planner.refreshed(now, self.store.refresh_schedules(described, now))
        for schedule, tick in self.planner.due(now):
            with self.store.lock:     # claim and enqueue in one step
                if self.store.claim_tick(schedule.key, tick):
                    args = encode_args(schedule.worker.name, schedule.args)
                    MemoryEnqueuer.push(schedule.worker, self.store, [args])
        self.planner.passed(now)

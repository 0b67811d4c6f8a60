"""The Sidekiq backend on a real Redis: enqueue, fetch, settle, recover, poll, beat, operate."""

import json
import random
import threading
import time

import pytest
import redis

import jobrunner
from jobrunner.backends.sidekiq.backend import SidekiqBackend, SidekiqConsumer, SidekiqEnqueuer
from jobrunner.backends.sidekiq.housekeeper import SidekiqHousekeeper
from jobrunner.backends.paused import PAUSE_CHECK_SECONDS
from jobrunner.backends.sidekiq import sets
from jobrunner.backends.sidekiq.payload import encode_backtrace, inflight_key, stat_keys
from jobrunner.config import Settings
from jobrunner.errors import BackendUnavailable
from jobrunner.job import ErrorInfo
from jobrunner.process.state import RunningJob, SupervisorState

IDENTITY = "testhost:100:0123456789ab"
CHILD = IDENTITY + ":101"
ERROR = ErrorInfo(error_class="RuntimeError", message="it broke")


class MailWorker(jobrunner.Worker):
    enqueuer = SidekiqEnqueuer
    queue = "mail"
    max_retries = 3

    def handle(self, args):
        pass


class SlowWorker(jobrunner.Worker):
    enqueuer = SidekiqEnqueuer
    queue = "slow"

    @classmethod
    def backoff(cls, retry_count):
        return 1000 + retry_count

    def handle(self, args):
        pass


@pytest.fixture
def registry():
    reg = jobrunner.Registry()
    reg.register(MailWorker)
    reg.register(SlowWorker)
    return reg


@pytest.fixture
def backend(redis_url, registry):
    return SidekiqBackend(Settings(redis_url=redis_url, processes=1), registry)


@pytest.fixture
def client(redis_url):
    conn = redis.Redis.from_url(redis_url, decode_responses=True)
    yield conn
    conn.close()


@pytest.fixture
def make_consumer(redis_url):
    made = []

    def make(queues=("mail",), child_id=CHILD, **options):
        conn = redis.Redis.from_url(redis_url, decode_responses=True,
                                    encoding_errors="surrogateescape")
        consumer = SidekiqConsumer(conn, list(queues), child_id, **options)
        made.append(consumer)
        return consumer

    yield make
    for consumer in made:
        consumer.client.close()


@pytest.fixture
def housekeeper(redis_url, registry):
    conn = redis.Redis.from_url(redis_url, decode_responses=True)
    keeper = SidekiqHousekeeper(conn, IDENTITY, registry=registry)
    yield keeper
    conn.close()


def state(**overrides):
    fields = dict(identity=IDENTITY, hostname="testhost", pid=100, started_at=1700000000.5,
                  queues=["mail", "slow"], concurrency=2, children=(CHILD,))
    fields.update(overrides)
    return SupervisorState(**fields)


def one(consumer, timeout=1.0):
    jobs = consumer.fetch(timeout)
    assert len(jobs) == 1, jobs
    return jobs[0]


def command_calls(conn, name):
    stats = conn.info("commandstats").get(f"cmdstat_{name}")
    return stats["calls"] if stats else 0


# -- enqueue ------------------------------------------------------------------------------

def test_enqueue_writes_sidekiq_wire_shape(client):
    before = time.time()
    jid = MailWorker.enqueue(client, {"to": "a@b"})
    assert client.smembers("queues") == {"mail"}
    (raw,) = client.lrange("queue:mail", 0, -1)
    item = json.loads(raw)
    assert item == {"class": "MailWorker", "args": [{"to": "a@b"}], "queue": "mail", "retry": 3,
                    "jid": jid, "created_at": item["created_at"],
                    "enqueued_at": item["created_at"]}
    assert before <= item["created_at"] <= time.time()
    assert ": " not in raw and ", " not in raw


def test_batch_is_one_sadd_and_one_lpush_in_order(client):
    sadd, lpush = command_calls(client, "sadd"), command_calls(client, "lpush")
    jids = MailWorker.enqueue_batch(client, ["a", "b", "c"])
    assert command_calls(client, "sadd") - sadd == 1
    assert command_calls(client, "lpush") - lpush == 1
    popped = [json.loads(client.rpop("queue:mail")) for _ in range(3)]
    assert [p["jid"] for p in popped] == jids and [p["args"] for p in popped] == [["a"], ["b"],
                                                                                   ["c"]]
    assert len({(p["created_at"], p["enqueued_at"]) for p in popped}) == 1


def test_queue_is_announced_once_per_interval_then_every_push_is_one_lpush(client, monkeypatch):
    MailWorker.enqueue(client, 1)
    assert client.smembers("queues") == {"mail"}
    client.srem("queues", "mail")                     # as Sidekiq's Queue#clear does
    sadd, lpush = command_calls(client, "sadd"), command_calls(client, "lpush")
    for n in range(5):
        MailWorker.enqueue(client, n)
    assert command_calls(client, "sadd") == sadd
    assert command_calls(client, "lpush") - lpush == 5
    assert client.llen("queue:mail") == 6
    # Once the interval has passed, the next push adds the queue back.
    monkeypatch.setattr("jobrunner.backends.sidekiq.enqueue.ANNOUNCE_INTERVAL", 0.0)
    MailWorker.enqueue(client, 6)
    assert client.smembers("queues") == {"mail"}


def test_a_failed_push_does_not_count_as_announcing_the_queue(redis_url):
    broken = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    with pytest.raises(redis.ConnectionError):
        MailWorker.enqueue(broken, 1)
    from jobrunner.backends.sidekiq.enqueue import _announced_queues
    assert "mail" not in _announced_queues(broken)


def test_delayed_jobs_go_to_schedule_without_enqueued_at(client):
    jid = MailWorker.enqueue_in(client, 60, [1, 2])
    assert not client.exists("queue:mail") and not client.exists("queues")
    ((raw, score),) = client.zrange("schedule", 0, -1, withscores=True)
    item = json.loads(raw)
    assert item["jid"] == jid and item["args"] == [[1, 2]] and "enqueued_at" not in item
    assert abs(score - (item["created_at"] + 60)) < 1


def test_delayed_batch_is_one_zadd(client):
    zadd = command_calls(client, "zadd")
    ids = MailWorker._enqueuer().push(MailWorker, client, ["1", "2", "3"], at=time.time() + 30)
    assert command_calls(client, "zadd") - zadd == 1
    assert sorted(json.loads(m)["jid"] for m in client.zrange("schedule", 0, -1)) == sorted(ids)


def test_at_in_the_past_pushes_immediately(client):
    MailWorker._enqueuer().push(MailWorker, client, ['"x"'], at=time.time() - 5)
    assert client.llen("queue:mail") == 1 and not client.exists("schedule")


# -- fetch --------------------------------------------------------------------------------

def test_reliable_fetch_holds_the_job_in_flight_until_ack(client, make_consumer):
    consumer = make_consumer()
    MailWorker.enqueue(client, {"n": 1})
    raw = client.lindex("queue:mail", 0)
    job = one(consumer)
    assert job.args == {"n": 1} and job.queue == "mail" and job.receipt == raw
    assert client.lrange(inflight_key(CHILD), 0, -1) == [raw]
    assert inflight_key(CHILD) in client.smembers("jobrunner:inflight")
    assert consumer.token(job) == {"queue": "mail", "jid": job.id}
    consumer.ack(job)
    assert not client.exists(inflight_key(CHILD))
    consumer.flush()
    assert client.get("stat:processed") == "1" and client.get("stat:failed") == "0"


def test_a_child_takes_nothing_while_its_supervisors_heartbeat_has_expired(
        client, make_consumer, housekeeper):
    # Other supervisors take a host whose heartbeat expired for dead and put back what its
    # children hold: a job taken now (the host back from a cut link before its housekeeper
    # beats again) would run twice. Before the first beat (start-up), fetching is allowed.
    consumer = make_consumer()
    MailWorker.enqueue_batch(client, [{"n": 1}, {"n": 2}])
    assert one(consumer).args == {"n": 1}, "no beat yet: a starting child fetches"
    housekeeper.beat(state())
    client.delete(IDENTITY)                          # the heartbeat expired
    started = time.monotonic()
    assert consumer.fetch(0.5) == []
    assert time.monotonic() - started < 2.0, "the fetch still ends within its timeout"
    assert client.llen("queue:mail") == 1, "the job stays in its queue"
    housekeeper.beat(state())
    assert one(consumer).args == {"n": 2}


def test_fetch_returns_empty_within_its_timeout(make_consumer):
    for consumer in (make_consumer(), make_consumer(["mail", "slow"], child_id=CHILD + "1"),
                     make_consumer(fetch="basic", child_id=CHILD + "2")):
        started = time.monotonic()
        assert consumer.fetch(0.3) == []
        assert time.monotonic() - started < 1.0
        assert consumer.fetch(0) == []


def test_basic_fetch_is_brpop_with_nothing_in_flight(client, make_consumer):
    consumer = make_consumer(["slow", "mail"], fetch="basic")
    brpop = command_calls(client, "brpop")
    MailWorker.enqueue(client, "hi")
    job = one(consumer)
    assert job.args == "hi" and job.queue == "mail"
    assert command_calls(client, "brpop") - brpop == 1
    assert not client.exists(inflight_key(CHILD))
    consumer.retry(job, 30, ERROR)
    assert json.loads(client.zrange("retry", 0, -1)[0])["error_message"] == "it broke"


def test_strict_order_drains_the_first_queue_first(client, make_consumer):
    SlowWorker.enqueue_batch(client, [1, 2])
    MailWorker.enqueue_batch(client, [3, 4])
    consumer = make_consumer(["mail", "slow"])
    assert [one(consumer).args for _ in range(4)] == [3, 4, 1, 2]


def test_weighted_order_takes_from_every_queue(client, make_consumer):
    SlowWorker.enqueue_batch(client, list(range(20)))
    MailWorker.enqueue_batch(client, list(range(20)))
    consumer = make_consumer([("mail", 1), ("slow", 1)], rng=random.Random(3))
    queues = [one(consumer).queue for _ in range(10)]
    assert set(queues) == {"mail", "slow"}


def test_multi_queue_fetch_wakes_for_a_job_on_a_later_queue(client, make_consumer):
    consumer = make_consumer(["mail", "slow"])
    result = []
    fetcher = threading.Thread(target=lambda: result.extend(consumer.fetch(3.0)))
    started = time.monotonic()
    fetcher.start()
    SlowWorker.enqueue(client, "late")
    fetcher.join(5)
    assert [job.args for job in result] == ["late"]
    assert time.monotonic() - started < 2.0


def test_a_new_consumer_first_requeues_its_own_leftovers(client, make_consumer):
    MailWorker.enqueue_batch(client, ["a", "b", "c"])
    first = make_consumer()
    held = [one(first), one(first)]
    second = make_consumer()          # same child id: a restart of that child
    assert not client.exists(inflight_key(CHILD))
    assert [one(second).args for _ in range(3)] == ["a", "b", "c"]
    assert held[0].receipt in client.lrange(inflight_key(CHILD), 0, -1)


def test_bad_payloads_come_back_as_problems(client, make_consumer):
    consumer = make_consumer()
    client.lpush("queue:mail", "{broken", "[1]")
    jobs = [one(consumer), one(consumer)]
    assert [j.receipt for j in jobs] == ["{broken", "[1]"]
    assert all(j.problem for j in jobs)


# -- settle -------------------------------------------------------------------------------

def test_retry_writes_sidekiq_fields_and_leaves_flight(client, make_consumer):
    consumer = make_consumer()
    client.lpush("queue:mail", '{"class":"MailWorker","args":[1],"queue":"mail","jid":"j1",'
                               '"retry":true,"tags":["x"],"created_at":5.5}')
    job = one(consumer)
    before = time.time()
    consumer.retry(job, 20, ERROR)
    ((raw, score),) = client.zrange("retry", 0, -1, withscores=True)
    item = json.loads(raw)
    assert item["error_class"] == "RuntimeError" and item["error_message"] == "it broke"
    assert item["retry_count"] == 0 and before <= item["failed_at"] <= time.time()
    assert item["tags"] == ["x"] and item["created_at"] == 5.5 and item["retry"] is True
    assert abs(score - (item["failed_at"] + 20)) < 0.01
    assert not client.exists(inflight_key(CHILD))
    # The second failure: retried_at, count + 1.
    client.delete("retry")
    client.rpush("queue:mail", raw)
    again = one(consumer)
    assert again.attempt == 2
    consumer.retry(again, 20, ERROR)
    item = json.loads(client.zrange("retry", 0, -1)[0])
    assert item["retry_count"] == 1 and "retried_at" in item and item["failed_at"] > 0
    consumer.flush()
    assert client.mget("stat:processed", "stat:failed") == ["2", "2"]
    day_processed = stat_keys(time.time())[2]
    assert client.get(day_processed) == "2" and client.ttl(day_processed) > 157000000


def test_retry_queue_is_used(client, make_consumer):
    consumer = make_consumer()
    client.lpush("queue:mail", '{"class":"MailWorker","args":[],"retry_queue":"later"}')
    consumer.retry(one(consumer), 5, ERROR)
    assert json.loads(client.zrange("retry", 0, -1)[0])["queue"] == "later"


def test_bury_puts_the_failed_job_in_dead(client, make_consumer):
    consumer = make_consumer()
    jid = MailWorker.enqueue(client, 1)
    consumer.bury(one(consumer), ERROR)
    ((raw, score),) = client.zrange("dead", 0, -1, withscores=True)
    item = json.loads(raw)
    assert item["jid"] == jid and item["error_class"] == "RuntimeError"
    assert item["retry_count"] == 0 and abs(score - item["failed_at"]) < 0.01
    assert not client.exists(inflight_key(CHILD))


def test_bury_of_bad_payloads(client, make_consumer):
    consumer = make_consumer()
    client.lpush("queue:mail", "{broken", '"just a string"')
    for _ in range(2):
        job = one(consumer)
        consumer.bury(job, ErrorInfo(error_class="InvalidPayload", message=job.problem))
    members = client.zrange("dead", 0, -1)
    assert "{broken" in members                     # invalid JSON: raw, as Sidekiq does
    (wrapped,) = [json.loads(m) for m in members if m != "{broken"]
    assert wrapped["class"] == "jobrunner.InvalidPayload"
    assert wrapped["args"] == ['"just a string"'] and wrapped["queue"] == "mail"
    consumer.flush()
    assert client.get("stat:processed") is None     # never reached execution


def test_dead_is_trimmed_like_sidekiq(client, make_consumer):
    now = time.time()
    pipe = client.pipeline(transaction=False)
    for start in range(0, 10000, 2000):
        pipe.zadd("dead", {f"old-{i}": now - 100 + i / 1000 for i in range(start, start + 2000)})
    pipe.zadd("dead", {"ancient": now - 181 * 24 * 3600})
    pipe.execute()
    consumer = make_consumer()
    MailWorker.enqueue(client, 1)
    consumer.bury(one(consumer), ERROR)
    assert client.zcard("dead") == 9999
    assert client.zscore("dead", "ancient") is None
    assert json.loads(client.zrange("dead", -1, -1)[0])["class"] == "MailWorker"


def test_discard_drops_the_job_and_counts_a_failure(client, make_consumer):
    consumer = make_consumer()
    MailWorker.enqueue(client, 1)
    consumer.discard(one(consumer), ERROR)
    assert not client.exists(inflight_key(CHILD), "retry", "dead")
    consumer.close()
    assert client.mget("stat:processed", "stat:failed") == ["1", "1"]


def test_requeue_puts_the_exact_string_next_in_line(client, make_consumer):
    consumer = make_consumer()
    odd = '{"args":[1],  "class":"MailWorker", "x":"\\u00e9"}'
    client.lpush("queue:mail", odd)
    job = one(consumer)
    MailWorker.enqueue_batch(client, ["later1", "later2"])
    consumer.requeue(job)
    assert client.lindex("queue:mail", -1) == odd
    assert not client.exists(inflight_key(CHILD))
    assert one(consumer).receipt == odd


def test_requeue_many_keeps_the_batch_in_fetch_order_in_one_round_trip(client, make_consumer,
                                                                        monkeypatch):
    consumer = make_consumer()
    MailWorker.enqueue_batch(client, ["a", "b", "c"])
    batch = consumer.fetch(1, limit=3)
    assert [job.args for job in batch] == ["a", "b", "c"]
    consumer.requeue_many(batch[:1])        # the settle script is loaded into Redis by now
    consumer.fetch(1, limit=1)
    sent = count_requests(monkeypatch)
    consumer.requeue_many(batch[1:])
    monkeypatch.undo()
    assert len(sent) == 1
    consumer.ack(batch[0])
    assert [job.args for job in consumer.fetch(1, limit=3)] == ["b", "c"]


def test_settling_a_job_already_recovered_writes_nothing(client, make_consumer, housekeeper):
    consumer = make_consumer()
    MailWorker.enqueue(client, 1)
    job = one(consumer)
    housekeeper.recover(CHILD, [consumer.token(job)], crashed=False)
    consumer.retry(job, 10, ERROR)
    assert client.llen("queue:mail") == 1 and not client.exists("retry")


def test_a_new_consumer_writes_the_acks_of_the_one_before_then_takes_back_the_rest(
        client, make_consumer):
    first = make_consumer()
    MailWorker.enqueue_batch(client, [1, 2])
    done, unstarted = first.fetch(1, limit=2)
    first.ack_later(done)
    acks = first.take_unsent_acks()
    assert first.take_unsent_acks() is None
    make_consumer(acks=acks)                # same child, after a lost connection
    assert client.lrange("queue:mail", 0, -1) == [unstarted.receipt]
    assert not client.exists(inflight_key(CHILD))


# -- recovery -----------------------------------------------------------------------------

def test_recover_after_shutdown_requeues_unchanged(client, make_consumer, housekeeper):
    consumer = make_consumer(["mail", "slow"])
    MailWorker.enqueue(client, 1)
    SlowWorker.enqueue(client, 2)
    held = [one(consumer).receipt, one(consumer).receipt]
    housekeeper.recover(CHILD, [{"queue": "slow"}], crashed=False)
    assert client.lrange("queue:mail", 0, -1) == [held[0]]
    assert client.lrange("queue:slow", 0, -1) == [held[1]]
    assert not client.exists(inflight_key(CHILD))
    # Still registered: a write the child sent before it was stopped may yet arrive.
    assert inflight_key(CHILD) in client.smembers("jobrunner:inflight")


def test_recover_after_crash_counts_a_failed_attempt(client, make_consumer, housekeeper):
    consumer = make_consumer()
    MailWorker.enqueue(client, 1)
    job = one(consumer)
    before = time.time()
    housekeeper.recover(CHILD, [consumer.token(job)], crashed=True)
    ((raw, score),) = client.zrange("retry", 0, -1, withscores=True)
    item = json.loads(raw)
    assert item["error_class"] == "jobrunner.ChildDied" and item["retry_count"] == 0
    assert before + 15 <= score <= time.time() + 24
    assert not client.exists(inflight_key(CHILD))
    housekeeper.beat(state())
    assert client.mget("stat:processed", "stat:failed") == ["1", "1"]


def test_crash_fails_only_the_running_job_and_puts_prefetched_ones_back(
        client, make_consumer, housekeeper):
    consumer = make_consumer()
    MailWorker.enqueue_batch(client, [1, 2, 3])
    held = [one(consumer) for _ in range(3)]
    running = held[1]
    housekeeper.recover(CHILD, [consumer.token(running)], crashed=True)
    ((raw, _),) = client.zrange("retry", 0, -1, withscores=True)
    assert json.loads(raw)["jid"] == running.id
    assert sorted(client.lrange("queue:mail", 0, -1)) == sorted(
        [held[0].receipt, held[2].receipt]), "the others go back byte for byte"
    assert not client.exists(inflight_key(CHILD))


def test_crash_recovery_acks_the_jobs_that_succeeded_and_requeues_the_unstarted(
        client, make_consumer, housekeeper):
    consumer = make_consumer()
    MailWorker.enqueue_batch(client, [1, 2, 3])
    done, running, waiting = [one(consumer) for _ in range(3)]
    consumer.ack_later(done)                # held for the next fetch, which never comes
    housekeeper.recover(CHILD, [consumer.token(running)], crashed=True,
                        held=[consumer.token(waiting)],
                        finished=[{"token": consumer.token(done), "worker": "MailWorker"}])
    assert [json.loads(raw)["jid"] for raw in client.zrange("retry", 0, -1)] == [running.id]
    assert client.lrange("queue:mail", 0, -1) == [waiting.receipt]
    assert not client.exists(inflight_key(CHILD))
    housekeeper.beat(state())
    assert client.mget("stat:processed", "stat:failed") == ["2", "1"]   # done + the crash


def test_a_payload_without_a_jid_that_overran_its_limit_is_buried_not_requeued(
        client, make_consumer, housekeeper):
    consumer = make_consumer()
    client.lpush("queue:mail", "{not json", '{"class":"MailWorker","args":[1],"jid":"ok"}')
    bad, good = one(consumer), one(consumer)
    assert bad.problem and bad.id is None
    housekeeper.recover(CHILD, [consumer.token(bad)], crashed=True, reason="timeout")
    assert client.zcard("dead") == 1 and client.zcard("retry") == 0
    assert client.lrange("queue:mail", 0, -1) == [good.receipt]


def test_a_crash_with_no_job_running_charges_nothing(client, make_consumer, housekeeper):
    # A child killed while idle (frozen, silent): a blocking fetch may have moved jobs into its
    # list after it stopped reading. None of them began, so none is charged a run.
    consumer = make_consumer()
    MailWorker.enqueue_batch(client, [1, 2])
    reported, moved_in_late = one(consumer), one(consumer)
    housekeeper.recover(CHILD, [], crashed=True, reason="heartbeat",
                        held=[consumer.token(reported)])
    assert client.zcard("retry") == 0 and client.zcard("dead") == 0
    assert sorted(client.lrange("queue:mail", 0, -1)) == sorted(
        [reported.receipt, moved_in_late.receipt]), "both back byte for byte"


def test_crash_after_a_timeout_kill_says_so_and_uses_the_workers_backoff(
        client, make_consumer, housekeeper):
    consumer = make_consumer(["slow"])
    SlowWorker.enqueue(client, 1)
    job = one(consumer)
    before = time.time()
    housekeeper.recover(CHILD, [consumer.token(job)], crashed=True, reason="timeout")
    ((raw, score),) = client.zrange("retry", 0, -1, withscores=True)
    assert json.loads(raw)["error_class"] == "JobTimeout"
    assert before + 1000 <= score <= time.time() + 1000


@pytest.mark.parametrize("payload, where", [
    ({"retry": 0}, "dead"),
    ({"retry": False}, None),
    ({"retry": 2, "retry_count": 1}, "dead"),           # third run: budget of 2 spent
    ({"retry": 2, "retry_count": 0}, "retry"),
    ({"class": "Unknown", "retry": True}, "dead"),      # no budget known: never dropped
    ({"class": "Unknown", "retry": 4}, "retry"),
    ({"retry": True, "dead": False, "retry_count": 2}, None),  # MailWorker.max_retries == 3
    ({"retry": True, "retry_count": 1}, "retry"),
])
def test_crash_recovery_respects_the_retry_option(client, make_consumer, housekeeper, payload,
                                                  where):
    item = {"class": "MailWorker", "args": [1], "queue": "mail", "jid": "c" * 24}
    item.update(payload)
    client.lpush("queue:mail", json.dumps(item))
    consumer = make_consumer()
    job = one(consumer)
    housekeeper.recover(CHILD, [consumer.token(job)], crashed=True)
    assert client.zcard("retry") == (where == "retry")
    assert client.zcard("dead") == (where == "dead")
    assert not client.exists(inflight_key(CHILD), "queue:mail")


def test_whole_host_recovery_after_heartbeat_expiry(client, make_consumer, housekeeper):
    lost_child = "deadhost:7:aaaaaaaaaaaa:8"
    live_child = "livehost:9:bbbbbbbbbbbb:10"
    MailWorker.enqueue_batch(client, [1, 2, 3])
    lost, live, own = (make_consumer(child_id=c) for c in (lost_child, live_child, CHILD))
    lost_job = one(lost)
    one(live), one(own)
    client.hset("livehost:9:bbbbbbbbbbbb", "beat", "1")
    # The first scan only suspects; an owner that has merely not beaten yet gets a grace scan.
    assert housekeeper.recover_orphans(state()) == []
    assert housekeeper.recover_orphans(state()) == [lost_child]
    # Nothing says the lost job began: it goes back unchanged, not charged a run.
    assert client.lrange("queue:mail", 0, -1) == [lost_job.receipt]
    assert client.zcard("retry") == 0 and client.zcard("dead") == 0
    assert not client.exists(inflight_key(lost_child))
    assert client.llen(inflight_key(live_child)) == 1 and client.llen(inflight_key(CHILD)) == 1
    # The emptied list stays registered for late writes, then is forgotten.
    assert inflight_key(lost_child) in client.smembers("jobrunner:inflight")
    housekeeper.clock = lambda: time.time() + housekeeper.late_write_horizon + 1
    assert housekeeper.recover_orphans(state()) == []
    assert client.smembers("jobrunner:inflight") == {inflight_key(live_child),
                                                     inflight_key(CHILD)}


def test_the_sweep_recovers_a_gone_child_of_its_own_supervisor(client, make_consumer,
                                                                housekeeper):
    # The supervisor's recovery request was lost (its housekeeper killed with it in hand):
    # the list of a child that is no longer alive is found by the next sweeps.
    consumer = make_consumer()
    MailWorker.enqueue(client, 1)
    job = one(consumer)
    assert housekeeper.recover_orphans(state()) == []              # alive: left alone
    assert housekeeper.recover_orphans(state(children=())) == []   # gone: suspected
    assert housekeeper.recover_orphans(state(children=())) == [CHILD]
    assert client.lrange("queue:mail", 0, -1) == [job.receipt]
    assert client.zcard("retry") == 0 and client.zcard("dead") == 0


def test_a_late_write_into_a_recovered_list_is_found(client, make_consumer, housekeeper):
    consumer = make_consumer()
    MailWorker.enqueue_batch(client, [1, 2])
    job = one(consumer)
    housekeeper.recover(CHILD, [consumer.token(job)], crashed=False)
    # A BLMOVE the dead child sent during a network hang reaches the server only now.
    late = client.lmove("queue:mail", inflight_key(CHILD), "LEFT", "LEFT")    # job 2
    assert late is not None
    assert housekeeper.recover_orphans(state(children=())) == []
    assert housekeeper.recover_orphans(state(children=())) == [CHILD]
    assert sorted(client.lrange("queue:mail", 0, -1)) == sorted([job.receipt, late])
    assert not client.exists(inflight_key(CHILD))


def test_a_job_that_keeps_losing_its_children_ends_as_a_crashed_run(client, make_consumer,
                                                                    housekeeper):
    MailWorker.enqueue(client, 1)
    for round in range(housekeeper.orphan_limit):
        child = f"deadhost:7:aaaaaaaaaaaa:{round}"
        one(make_consumer(child_id=child))
        assert housekeeper.recover_orphans(state()) == []
        assert housekeeper.recover_orphans(state()) == [child]
        back = round + 1 < housekeeper.orphan_limit
        assert client.llen("queue:mail") == (1 if back else 0), round
    (raw,) = client.zrange("retry", 0, -1)
    assert json.loads(raw)["error_class"] == "jobrunner.ChildDied"


def test_a_clean_stop_leaves_no_in_flight_list_registered(client, make_consumer):
    consumer = make_consumer()
    MailWorker.enqueue(client, 1)
    consumer.ack(one(consumer))
    assert inflight_key(CHILD) in client.smembers("jobrunner:inflight")
    consumer.close()
    assert inflight_key(CHILD) not in client.smembers("jobrunner:inflight")


def test_an_owner_that_comes_back_is_not_recovered(client, make_consumer, housekeeper):
    child = "slowstart:7:cccccccccccc:8"
    MailWorker.enqueue(client, 1)
    one(make_consumer(child_id=child))
    assert housekeeper.recover_orphans(state()) == []
    client.hset("slowstart:7:cccccccccccc", "beat", "1")
    assert housekeeper.recover_orphans(state()) == []
    assert client.llen(inflight_key(child)) == 1


# -- poller -------------------------------------------------------------------------------

def test_poller_moves_due_retry_and_schedule_jobs(client, housekeeper):
    now = time.time()
    due_retry = '{"class":"MailWorker","args":[1],"queue":"mail","jid":"r1","retry_count":0}'
    due_scheduled = '{"class":"SlowWorker","args":[2],"queue":"slow","jid":"s1"}'
    client.zadd("retry", {due_retry: now - 1, '{"class":"K","jid":"later"}': now + 600})
    client.zadd("schedule", {due_scheduled: now - 1, "{bad json": now - 1})
    assert housekeeper.poll() == 3
    moved = json.loads(client.lindex("queue:mail", 0))
    assert moved["jid"] == "r1" and moved["retry_count"] == 0
    assert moved["enqueued_at"] >= now
    assert json.loads(client.lindex("queue:slow", 0))["jid"] == "s1"
    assert client.smembers("queues") == {"mail", "slow"}
    assert client.zrange("retry", 0, -1) == ['{"class":"K","jid":"later"}']
    assert client.zrange("dead", 0, -1) == ["{bad json"] and client.zcard("schedule") == 0


def test_poller_work_per_call_is_bounded(client, housekeeper):
    now = time.time()
    client.zadd("schedule", {json.dumps({"class": "K", "args": [i], "queue": "bulk"}): now - 1
                             for i in range(250)})
    housekeeper.promote_limit, housekeeper.promote_batch = 120, 50
    assert housekeeper.poll() == 120
    assert client.llen("queue:bulk") == 120 and client.zcard("schedule") == 130


def test_scheduled_job_round_trip(client, make_consumer, housekeeper):
    MailWorker._enqueuer().push(MailWorker, client, ['{"k":1}'], at=time.time() + 0.2)
    deadline = time.monotonic() + 5
    while not housekeeper.poll():
        assert time.monotonic() < deadline, "the scheduled job never became due"
    job = one(make_consumer())
    assert job.args == {"k": 1} and job.enqueued_at is not None


# -- heartbeat ----------------------------------------------------------------------------

def test_heartbeat_writes_sidekiq_process_keys(client, make_consumer, housekeeper):
    consumer = make_consumer()
    MailWorker.enqueue(client, {"n": 5})
    job = one(consumer)
    running = RunningJob(child_id=CHILD, job_id=job.id, worker="MailWorker", queue="mail",
                         started_at=1700000100.7)
    assert housekeeper.beat(state(busy=(running,), tag="blue")) == []
    assert client.smembers("processes") == {IDENTITY}
    fields = client.hgetall(IDENTITY)
    # 6.4's six fields, and the thread count 8.1.2+ reads from the hash itself
    assert set(fields) == {"info", "busy", "beat", "rtt_us", "quiet", "rss", "concurrency"}
    assert fields["concurrency"] == "2"
    info = json.loads(fields["info"])
    assert info == {"hostname": "testhost", "started_at": 1700000000.5, "pid": 100, "tag": "blue",
                    "concurrency": 2, "queues": ["mail", "slow"], "labels": [],
                    "identity": IDENTITY, "version": f"jobrunner {jobrunner.__version__}",
                    "embedded": False, "weights": [{"mail": 0, "slow": 0}],
                    "capsules": {"default": {"concurrency": 2, "mode": "strict",
                                             "weights": {"mail": 0, "slow": 0}}}}
    assert fields["busy"] == "1" and fields["quiet"] == "false"
    assert int(fields["rtt_us"]) >= 0 and int(fields["rss"]) >= 0
    assert abs(float(fields["beat"]) - time.time()) < 5
    assert 0 < client.ttl(IDENTITY) <= 60
    for key in (IDENTITY + ":workers", IDENTITY + ":work"):     # 6.4's and 7.0+'s
        work = client.hgetall(key)
        assert list(work) == ["101"]
        entry = json.loads(work["101"])
        assert entry == {"queue": "mail", "payload": job.receipt, "run_at": 1700000100}
        assert 0 < client.ttl(key) <= 60
    housekeeper.beat(state(quiet=True))
    assert client.hget(IDENTITY, "quiet") == "true"
    assert not client.exists(IDENTITY + ":workers", IDENTITY + ":work")


def test_tick_returns_a_remote_signal_and_close_clears_the_process(client, housekeeper):
    client.lpush(IDENTITY + "-signals", "TSTP")
    assert housekeeper.tick(state()) == ["TSTP"]
    assert housekeeper.tick(state()) == []      # each tick pops one signal, when there is one
    client.hset(IDENTITY + ":work", "101", "{}")
    housekeeper.close()
    assert not client.sismember("processes", IDENTITY)
    assert not client.exists(IDENTITY + ":work", IDENTITY + ":workers")
    assert client.exists(IDENTITY)              # expires by itself, as Sidekiq's does


# -- backend ------------------------------------------------------------------------------

def test_backend_makes_consumers_from_settings(client, backend):
    consumer = backend.consumer(["mail"], CHILD)
    try:
        MailWorker.enqueue(client, "x")
        assert one(consumer).args == "x"
        assert backend.connection_errors == (redis.ConnectionError, redis.TimeoutError,
                                             redis.exceptions.OutOfMemoryError,
                                             redis.exceptions.ReadOnlyError)
        assert backend.name == "sidekiq"
    finally:
        consumer.close()
    keeper = backend.housekeeper(IDENTITY)
    keeper.close()


def test_check_passes_and_reports_unreachable(backend, registry):
    assert isinstance(backend.check(), list)
    dead = SidekiqBackend(Settings(redis_url="redis://:secret@127.0.0.1:1/0", processes=1),
                          registry)
    with pytest.raises(BackendUnavailable) as caught:
        dead.check()
    assert "secret" not in str(caught.value) and "127.0.0.1:1" in str(caught.value)


def test_payload_bytes_that_are_not_utf8_round_trip(client, redis_url, make_consumer):
    raw_conn = redis.Redis.from_url(redis_url)
    odd = b'{"class":"MailWorker","args":["\xff\xfe"]}'
    raw_conn.lpush("queue:mail", odd, b"\xff not json")
    consumer = make_consumer()
    job = one(consumer)
    consumer.requeue(job)
    assert raw_conn.lindex("queue:mail", -1) == odd
    again = one(consumer)
    assert again.receipt == job.receipt and again.args == "\udcff\udcfe"
    consumer.ack(again)
    bad = one(consumer)
    assert bad.problem
    consumer.bury(bad, ERROR)
    assert raw_conn.zrange("dead", 0, -1) == [b"\xff not json"]
    raw_conn.close()


def test_blocking_is_capped_below_the_socket_timeout(redis_url):
    conn = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=2)
    consumer = SidekiqConsumer(conn, ["mail"], CHILD, max_block=30)
    started = time.monotonic()
    assert consumer.fetch(10) == []
    assert time.monotonic() - started < 1.9
    conn.close()


def test_backend_consumer_defaults_and_weights(redis_url, registry, client):
    settings = Settings(redis_url=redis_url, processes=1, queue_order="weighted",
                        sidekiq_fetch="basic")
    consumer = SidekiqBackend(settings, registry).consumer(None, CHILD)
    try:
        assert [name for name, _ in consumer.queues] == ["mail", "slow"]
        assert consumer.weighted and not consumer.reliable
        SlowWorker.enqueue(client, 1)
        assert one(consumer).queue == "slow"
    finally:
        consumer.close()


def test_redis_warnings():
    from jobrunner.backends.sidekiq.backend import redis_warnings
    assert redis_warnings({"redis_version": "7.0.15"}, {"maxmemory_policy": "noeviction"},
                          "reliable", "r") == []
    evicting = redis_warnings({"redis_version": "7.2.0"}, {"maxmemory_policy": "allkeys-lru"},
                              "reliable", "r")
    assert len(evicting) == 1 and "allkeys-lru" in evicting[0]
    old = redis_warnings({"redis_version": "6.0.9"}, {}, "reliable", "r")
    assert len(old) == 1 and "6.2" in old[0] and "basic" in old[0]


@pytest.mark.parametrize("fetch", ["reliable", "basic"])
def test_one_queue_is_fifo(client, make_consumer, fetch):
    MailWorker.enqueue_batch(client, [1, 2, 3])
    MailWorker.enqueue(client, 4)
    consumer = make_consumer(fetch=fetch)
    assert [one(consumer).args for _ in range(4)] == [1, 2, 3, 4]


def test_remote_signals_are_taken_oldest_first(client, housekeeper):
    client.lpush(IDENTITY + "-signals", "TSTP")
    client.lpush(IDENTITY + "-signals", "TERM")
    assert housekeeper.beat(state()) == ["TSTP"]
    assert housekeeper.beat(state()) == ["TERM"]


# -- operator interface -------------------------------------------------------------------

@pytest.fixture
def inspector(backend):
    made = backend.inspector()
    yield made
    made.close()


def ruby_job(jid, **fields):
    """A job as Sidekiq's Ruby client writes it (ActiveJob's wrapper, a jid of its own)."""
    return json.dumps(dict({"class": "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper",
                            "wrapped": "InvoiceJob", "queue": "mail",
                            "args": [{"job_class": "InvoiceJob", "arguments": [7]}],
                            "retry": True, "jid": jid, "created_at": 1700000000.25,
                            "enqueued_at": 1700000000.5}, **fields), separators=(",", ":"))


def test_find_job_finds_a_job_ruby_wrote_whatever_its_jid(client, inspector):
    # Sidekiq takes a jid given by the app: any text, here with MATCH's special characters.
    waiting, failed = "order-[42]*?", "ruby\\x"
    client.sadd("queues", "mail")
    client.lpush("queue:mail", ruby_job(waiting), ruby_job("order-[42]"))
    client.zadd("retry", {ruby_job(failed, error_class="Net::ReadTimeout",
                                   error_message="read", retry_count=2, retried_at=1700000300.0,
                                   error_backtrace=encode_backtrace(["app/jobs/x.rb:3"])):
                          1700000900.0})
    [found] = inspector.find_job(waiting)
    assert {k: found[k] for k in ("state", "id", "worker", "queue", "attempts", "enqueued_at",
                                  "backtrace", "process")} == {
        "state": "waiting", "id": waiting, "worker": "InvoiceJob", "queue": "mail",
        "attempts": 0, "enqueued_at": 1700000000.5, "backtrace": [], "process": None}
    [found] = inspector.find_job(failed)
    assert {k: found[k] for k in ("state", "attempts", "failed_at", "run_at", "backtrace")} == {
        "state": "retrying", "attempts": 3, "failed_at": 1700000300.0, "run_at": 1700000900.0,
        "backtrace": ["app/jobs/x.rb:3"]}
    assert inspector.find_job("order-") == [] and inspector.find_job("*") == []


def test_find_job_names_the_process_of_a_job_only_its_heartbeat_knows(client, make_consumer,
                                                                      housekeeper, inspector):
    consumer = make_consumer(fetch="basic")
    [jid] = MailWorker.enqueue_batch(client, ["x"])
    job = one(consumer)
    housekeeper.beat(state(busy=(RunningJob(child_id=CHILD, job_id=jid, worker="MailWorker",
                                            queue="mail", started_at=time.time()),)))
    [found] = inspector.find_job(jid)
    assert (found["state"], found["process"], found["worker"]) == ("running", IDENTITY,
                                                                   "MailWorker")
    consumer.ack(job)


def test_two_operators_running_the_same_retry_move_it_once(client, make_consumer, redis_url,
                                                           monkeypatch):
    consumer = make_consumer()
    [jid] = MailWorker.enqueue_batch(client, ["r"])
    consumer.retry(one(consumer), 3600, ERROR)
    # Both operators read the retry set before either moves the job.
    both_read = threading.Barrier(2, timeout=5)
    chosen = sets.select

    def select_then_wait(*args, **kwargs):
        found = list(chosen(*args, **kwargs))
        both_read.wait()
        return found

    monkeypatch.setattr(sets, "select", select_then_wait)
    backend = SidekiqBackend(Settings(redis_url=redis_url, processes=1))
    results = []

    def operator():
        made = backend.inspector()
        try:
            results.append(made.job_action("retrying", "run", ids=[jid]))
        finally:
            made.close()

    threads = [threading.Thread(target=operator) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(len(done) for done, _, _ in results) == [0, 1]
    assert client.llen("queue:mail") == 1 and client.zcard("retry") == 0


def test_kill_keeps_the_dead_set_trimmed_like_sidekiq(client, inspector):
    client.zadd("dead", {"ancient": time.time() - 181 * 24 * 3600})
    jid = MailWorker.enqueue_in(client, 3600, "k")
    [done], _, _ = inspector.job_action("scheduled", "kill", ids=[jid])
    assert done["id"] == jid and client.zcard("schedule") == 0
    [killed] = client.zrange("dead", 0, -1)         # "ancient" was over 180 days old
    assert json.loads(killed)["jid"] == jid


def test_a_signal_to_a_process_whose_heartbeat_expired_is_not_sent(client, housekeeper,
                                                                   inspector):
    housekeeper.beat(state())
    assert inspector.signal(IDENTITY, "quiet") is True
    assert client.lrange(IDENTITY + "-signals", 0, -1) == ["TSTP"]
    assert 0 < client.ttl(IDENTITY + "-signals") <= 60
    client.delete(IDENTITY + "-signals")
    client.pexpire(IDENTITY, 1)              # as when its last beat is 60 s old
    wait = time.monotonic() + 5
    while client.exists(IDENTITY) and time.monotonic() < wait:
        time.sleep(0.01)
    assert client.sismember("processes", IDENTITY)      # Sidekiq prunes it only when listing
    assert inspector.signal(IDENTITY, "stop") is False
    assert not client.exists(IDENTITY + "-signals")


def count_requests(monkeypatch):
    """A list that grows by one for every request a client sends (a pipeline is one), until
    ``monkeypatch.undo()``."""
    sent = []
    send = redis.connection.Connection.send_packed_command
    monkeypatch.setattr(redis.connection.Connection, "send_packed_command",
                        lambda self, *args, **kw: (sent.append(1), send(self, *args, **kw))[1])
    return sent


def test_an_idle_reliable_fetch_costs_two_round_trips(client, make_consumer, monkeypatch):
    # The fetch script (which also reads the paused queues), then the block, pipelined with
    # the registration of the in-flight list.
    consumer = make_consumer(["mail"], fetch="reliable")
    assert consumer.fetch(0) == []      # the script is loaded into Redis by now
    sent = count_requests(monkeypatch)
    for _ in range(3):
        assert consumer.fetch(0.2) == []
        consumer.flush()                # what the child does after an empty fetch
    monkeypatch.undo()
    assert len(sent) == 3 * 2


def test_an_idle_child_of_several_queues_blocks_longer_and_still_sees_every_queue(
        client, make_consumer, monkeypatch):
    consumer = make_consumer(["mail", "other"], fetch="reliable")
    for _ in range(4):                  # the block grows from 0.2 s to the whole timeout
        assert consumer.fetch(0.5) == []
    sent = count_requests(monkeypatch)
    for _ in range(3):
        assert consumer.fetch(0.5) == []
    monkeypatch.undo()
    assert len(sent) == 3 * 2, "the fetch script, then one block for the whole timeout"
    order = consumer.queues
    blocked_on = order[0][0]
    other = [name for name, _ in order if name != blocked_on][0]
    client.lpush(f"queue:{other}", json.dumps({"class": "MailWorker", "args": [1], "jid": "j1",
                                              "queue": other}))
    started = time.monotonic()
    jobs = consumer.fetch(0.5) or consumer.fetch(0.5)
    assert [job.id for job in jobs] == ["j1"]
    assert time.monotonic() - started < 1.0 + 0.5, "seen within the fetch's timeout"
    assert consumer.fetch(0) == []
    client.lpush(f"queue:{other}", json.dumps({"class": "MailWorker", "args": [2], "jid": "j2",
                                              "queue": other}))
    assert [job.id for job in consumer.fetch(0.5)] == ["j2"], "a hit resets the short block"


def test_basic_fetch_reads_the_paused_queues_once_per_check_interval_not_per_fetch(
        client, make_consumer, inspector):
    consumer = make_consumer(["mail", ("slow", 3)], fetch="basic")
    inspector.queue_action("pause", "slow")
    SlowWorker.enqueue(client, "held")
    before, started = command_calls(client, "smembers"), time.monotonic()
    for n in range(20):
        MailWorker.enqueue(client, n)
        assert one(consumer, timeout=0).args == n         # weighted order skips "slow"
    reads = command_calls(client, "smembers") - before
    assert 1 <= reads <= 1 + (time.monotonic() - started) // PAUSE_CHECK_SECONDS
    inspector.queue_action("resume", "slow")
    consumer.paused.expire()
    assert one(consumer, timeout=0).args == "held"


def test_reliable_fetch_skips_paused_queues_in_its_own_round_trip(client, make_consumer,
                                                                 inspector):
    consumer = make_consumer(["mail", ("slow", 3)], fetch="reliable")
    inspector.queue_action("pause", "slow")
    SlowWorker.enqueue(client, "held")
    assert consumer.fetch(0) == []      # the script is loaded into Redis by now
    before = command_calls(client, "smembers"), command_calls(client, "evalsha")
    for n in range(20):
        MailWorker.enqueue(client, n)
        assert one(consumer, timeout=0).args == n         # weighted order skips "slow"
    after = command_calls(client, "smembers"), command_calls(client, "evalsha")
    assert (after[0] - before[0], after[1] - before[1]) == (0, 20), "one script call a fetch"
    inspector.queue_action("resume", "slow")
    assert one(consumer, timeout=0).args == "held", "a resume is seen at the next fetch"
    inspector.queue_action("pause", "mail")
    inspector.queue_action("pause", "slow")
    MailWorker.enqueue(client, "paused")
    assert consumer.fetch(0.3) == [], "every queue paused: nothing is taken, not even blocking"
    assert client.llen("queue:mail") == 1


def test_purge_empties_the_list_and_keeps_the_queue_known(client, inspector):
    MailWorker.enqueue_batch(client, [1, 2, 3])
    inspector.queue_action("pause", "mail")
    assert inspector.queue_action("purge", "mail") == {"queue": "mail", "action": "purge",
                                                       "paused": True, "purged": 3}
    assert not client.exists("queue:mail") and client.smembers("queues") == {"mail"}
    [row] = inspector.stats()["queues"]
    assert (row["name"], row["waiting"], row["paused"]) == ("mail", 0, True)
    assert inspector.paused_queues() == ["mail"]

"""The supervisor's decisions without forking: pipes, crash loops, exits, resizing, recycling,
signals. Process-level behaviour, on both backends, is in test_supervisor.py."""

import logging
import select
import signal
import threading
import time

import pytest

import jobrunner
from jobrunner.process import exits
from jobrunner.process.channel import Channel
from jobrunner.process.messages import (Batch, Beat, Cut, Done, Dones, JobEntry, Ready, Recover,
                                        Recovered, State, Stop)
from jobrunner.config import Settings
from jobrunner.process.pool import MAX_BOOT_FAILURES, ChildRecord, CrashLoop, Pool
from jobrunner.process.signals import SignalQueue, describe_exit
from jobrunner.process.slot import JobSlot, JobTracker
from jobrunner.process.supervisor import Supervisor


@pytest.fixture
def channels():
    made = []

    def pair():
        ours, theirs = Channel.pair()
        made.extend((ours, theirs))
        return ours, theirs

    yield pair
    for end in made:
        end.close()


def record(pool, pid, channel, **fields):
    fields.setdefault("ready", True)
    rec = ChildRecord(pid=pid, child_id=f"id:{pid}", pool=pool, channel=channel, **fields)
    pool.children[pid] = rec
    return rec


# -- the pipe -----------------------------------------------------------------------------

def test_the_supervisor_end_never_blocks_on_a_child_that_does_not_read(channels):
    ours, theirs = channels()
    big = "x" * 100_000
    started = time.monotonic()
    for _ in range(20):                      # ~2 MB: far more than a socket buffer
        assert ours.send(State(state={"blob": big}))
    assert time.monotonic() - started < 1.0
    assert ours.pending_output
    received = []
    while ours.pending_output:
        received += theirs.receive()
        ours.flush()
    received += theirs.receive()
    assert 8 <= len(received) <= 20          # past OUTBOX_LIMIT the oldest-behind are dropped
    assert all(m == State(state={"blob": big}) for m in received)


def test_malformed_lines_from_a_child_are_skipped(channels, caplog):
    ours, theirs = channels()
    theirs.sock.sendall(b'not json\n[1]\n{"no":"t"}\n{"t":"beat"}\n{"t":"rea')
    assert ours.receive() == [Beat()]
    theirs.sock.sendall(b'dy"}\n')
    assert ours.receive() == [Ready()]
    assert caplog.text.count("ignoring a malformed message") == 3


def test_unknown_kinds_and_fields_are_skipped_like_malformed_lines(channels, caplog):
    ours, theirs = channels()
    theirs.sock.sendall(b'{"t":"start","id":"j1"}\n{"t":"beat","extra":1}\n{"t":"beat"}\n')
    assert ours.receive() == [Beat()]
    assert caplog.text.count("ignoring a malformed message") == 2


def test_many_messages_in_one_read_come_back_in_order(channels):
    ours, theirs = channels()
    for n in range(300):
        theirs.defer(n, "W", "q", "done", n * 10)
    theirs.send(Batch(first=0, jobs=[{"id": "j", "token": ["q", 1, 1]}]))
    dones, batch = ours.receive()            # the deferred ends go first, as one message
    assert dones == Dones(jobs=[Done(n, "W", "q", "done", n * 10) for n in range(300)])
    assert dones.jobs[30].duration == 0.0003
    assert batch == Batch(first=0, jobs=[{"id": "j", "token": ["q", 1, 1]}])
    theirs.defer("j", "W", "q", "retry", 5)
    theirs.flush_deferred()
    assert ours.receive() == [Dones(jobs=[Done("j", "W", "q", "retry", 5)])]
    assert theirs.flush_deferred() and ours.receive() == []      # nothing deferred: no line


def test_a_dones_entry_of_the_wrong_shape_drops_its_line_and_a_bad_duration_is_none(
        channels, caplog):
    ours, theirs = channels()
    theirs.sock.sendall(b'{"t":"dones","jobs":[["j","W","q","done",1,"extra"]]}\n'
                        b'{"t":"dones","jobs":[["j","W","q","done","1"],["k"],["m","W","q","done",true]]}\n')
    (dones,) = ours.receive()
    assert caplog.text.count("ignoring a malformed message") == 1
    assert [(d.id, d.outcome, d.duration) for d in dones.jobs] == [
        ("j", "done", None), ("k", None, None), ("m", "done", None)]


def test_fragments_that_would_join_into_json_are_still_refused_line_by_line(channels, caplog):
    ours, theirs = channels()
    theirs.sock.sendall(b'{"t":"done","x":[1\n2]}\n{"t":"beat"}\n')
    assert ours.receive() == [Beat()]
    assert caplog.text.count("ignoring a malformed message") == 2


def test_has_input_says_when_a_receive_would_find_a_message_or_the_end(channels):
    ours, theirs = channels()
    assert not theirs.has_input()
    ours.send(Stop())
    assert theirs.has_input() and theirs.has_input()     # asking reads nothing
    assert theirs.receive() == [Stop()]
    assert not theirs.has_input()
    ours.close()
    assert theirs.has_input() and theirs.receive() == [] and theirs.closed


def test_messages_written_before_a_child_died_are_still_read(channels):
    ours, theirs = channels()
    theirs.defer("j1", "W", "q", "done", 1)
    theirs.send(Beat(jobs=1))
    theirs.close()
    assert ours.receive() == [Dones(jobs=[Done("j1", "W", "q", "done", 1)]), Beat(jobs=1)]
    assert ours.receive() == [] and ours.closed
    assert not ours.send(Stop())


# -- crash loops and exits ----------------------------------------------------------------

def test_crash_loop_backs_off_exponentially_and_gives_up():
    loop = CrashLoop()
    waits = []
    for n in range(1, MAX_BOOT_FAILURES + 1):
        give_up = loop.failed(100.0)
        waits.append(round(loop.next_spawn_at - 100.0, 2))
        assert give_up == (n == MAX_BOOT_FAILURES)
    assert waits == [0.2, 0.4, 0.8, 1.6, 3.2]
    assert not loop.may_spawn(100.1) and loop.may_spawn(103.3)
    loop.reset()
    assert loop.failures == 0 and loop.may_spawn(0)


def test_a_child_ready_for_a_while_ends_the_crash_loop(channels):
    pool = Pool(name="pgmq", backend=None, queues=["q"], size=1)
    pool.boot.failed(0.0)
    rec = record(pool, 10, channels()[0], ready_at=50.0)
    pool.note_healthy(rec, 50.5)
    assert pool.boot.failures == 1
    pool.note_healthy(rec, 51.5)
    assert rec.healthy and pool.boot.failures == 0


def test_recovery_request_says_whether_the_run_counts_as_an_attempt(channels):
    pool = Pool(name="pgmq", backend=None, queues=["q"], size=1)
    running = JobEntry(id="j", token=["q", 7, 1])
    cases = [({}, [], False, "died"), ({"running": running}, [["q", 7, 1]], True, "died"),
             ({"running": running, "kill_reason": "timeout"}, [["q", 7, 1]], True, "timeout"),
             ({"running": running, "kill_reason": "shutdown"}, [["q", 7, 1]], False,
              "shutdown"),
             ({"kill_reason": "heartbeat"}, [], True, "heartbeat")]
    for pid, (fields, tokens, crashed, reason) in enumerate(cases):
        request = exits.recovery_request(record(pool, pid, None, **fields))
        assert request == Recover(child_id=f"id:{pid}", tokens=tokens, crashed=crashed,
                                  reason=reason, held=[], finished=[])


def test_a_recovery_request_is_kept_until_the_housekeeper_confirms_it(supervisor, channels):
    pool = Pool(name="pgmq", backend=None, queues=["q"], size=1)
    supervisor.pools = [pool]
    first, second = (Recover(child_id=f"id:{n}", tokens=[["q", n, 1]], crashed=True)
                     for n in (1, 2))
    pool.pending_recovery += [first, second]
    ours, theirs = channels()
    pool.housekeeper = ChildRecord(pid=90, child_id="id:90", pool=pool, channel=ours,
                                   kind="housekeeper", ready=True)
    pool.flush_recovery()
    select.select([theirs], [], [], 5)
    assert [(m.child_id, m.serial) for m in theirs.receive()] == [("id:1", 1), ("id:2", 2)]
    assert pool.pending_recovery == [] and pool.sent_recovery
    theirs.send(Recovered(serial=1))                # the first one is done...
    select.select([ours], [], [], 5)
    supervisor._handle_messages(pool.housekeeper)
    pool.housekeeper_gone()                         # ...then the housekeeper dies
    assert [m.child_id for m in pool.pending_recovery] == ["id:2"], "handed to the next one"
    pool.housekeeper_gone(keep_requests=False)      # at shutdown: nothing more to hand over
    pool.pending_recovery.clear()
    pool.sent_recovery[3] = first
    pool.housekeeper_gone(keep_requests=False)
    assert not pool.pending_recovery and not pool.sent_recovery


def test_the_supervisor_knows_the_running_job_and_the_unstarted_ones_from_the_slot(
        supervisor, channels):
    pool = Pool(name="pgmq", backend=None, queues=["q"], size=1)
    supervisor.pools = [pool]
    ours, theirs = channels()
    slot = JobSlot()
    rec = record(pool, 1, ours, jobs=JobTracker(slot))
    jobs = [{"id": str(n), "worker": "W", "queue": "q", "timeout": 5, "token": ["q", n, 1]}
            for n in range(1, 6)]
    theirs.send(Batch(first=0, jobs=jobs))
    supervisor._handle_messages(rec)
    supervisor._note_running(rec, 100.0)
    assert rec.running is None and rec.jobs.held() == [j["token"] for j in jobs]
    slot.start()                                    # job 1 runs
    supervisor._note_running(rec, 101.0)
    assert rec.running == JobEntry(**jobs[0]) and rec.running_since == 101.0
    supervisor._note_running(rec, 102.0)
    assert rec.running_since == 101.0               # the same job: its time goes on
    slot.finish()
    slot.start()
    slot.finish()                                   # job 2, unseen, came and went
    slot.start()                                    # job 3 runs
    supervisor._note_running(rec, 103.0)
    assert rec.running == JobEntry(**jobs[2]) and rec.running_since == 103.0
    request = exits.recovery_request(rec)
    assert request.tokens == [["q", 3, 1]] and request.held == [["q", 4, 1], ["q", 5, 1]]
    theirs.send(Cut())                              # the child put jobs 4 and 5 back itself
    supervisor._handle_messages(rec)
    assert exits.recovery_request(rec).held == []
    slot.finish()
    supervisor._note_running(rec, 104.0)
    assert rec.running is None and rec.running_since is None
    slot.close()


def test_a_child_working_through_jobs_counts_as_alive_before_its_done_lines_arrive(
        supervisor, channels):
    pool = Pool(name="pgmq", backend=None, queues=["q"], size=1)
    supervisor.pools = [pool]
    slot = JobSlot()
    rec = record(pool, 1, channels()[0], jobs=JobTracker(slot), last_beat=0.0, ready_at=0.0)
    rec.jobs.on_batch(Batch(jobs=[{"id": "long", "timeout": None}], first=0))
    slot.start()
    slot.finish()                   # a long job just ended; its "done" is not written yet
    now = supervisor.settings.heartbeat_timeout + 10.0
    supervisor._note_running(rec, now)
    supervisor._police(pool, now)
    assert rec.last_beat == now and rec.kill_reason is None
    slot.close()


def test_a_new_batch_continues_the_counts_of_the_last():
    slot = JobSlot()
    tracker = JobTracker(slot)
    assert tracker.on_batch(Batch(jobs=[{"id": "a"}, {"id": "x"}], first=0)) == []
    slot.start()
    assert [j.id for j in tracker.newly_started()] == ["a"]
    slot.finish()
    # "x" was cut; the next batch was read only after the child started two of its jobs.
    tracker.on_cut()
    slot.start()
    slot.start()
    assert tracker.on_batch(Batch(jobs=[{"id": "b"}, {"id": "c"}], first=1)) == []
    assert [j.id for j in tracker.newly_started()] == ["b", "c"]
    assert tracker.newly_started() == []
    assert tracker.running().id == "c" and tracker.held() == []
    slot.close()


def test_success_flags_name_the_jobs_to_ack_and_end_a_run_before_its_finish_count():
    slot = JobSlot()
    tracker = JobTracker(slot)
    jobs = [{"id": n, "worker": "W", "token": ["q", n, 1]} for n in range(4)]
    slot.begin_batch(4)
    tracker.on_batch(Batch(jobs=jobs, first=0))
    slot.start()
    slot.succeeded(0)
    slot.finish()
    slot.start()
    slot.finish()                               # job 1 failed: no flag
    slot.start()
    slot.succeeded(2)                           # killed between the flag and the finish
    assert tracker.running() is None
    assert [job.id for job in tracker.succeeded()] == [0, 2]
    assert tracker.held() == [["q", 3, 1]]
    slot.begin_batch(2)                         # the next batch starts with clear flags
    tracker.on_batch(Batch(jobs=jobs[:2], first=3))
    slot.start()                                # its first job (at a flagged position) runs
    assert tracker.succeeded() == [] and tracker.running() == JobEntry(**jobs[0])
    slot.close()


def test_failures_at_start_log_the_traceback_once_then_give_up(channels, caplog):
    pool = Pool(name="pgmq", backend=None, queues=["q"], size=2)
    failure = None
    for pid in range(1, MAX_BOOT_FAILURES + 1):
        rec = record(pool, pid, None, ready=False,
                     boot_error=("ValueError: bad", "Traceback...\nValueError: bad\n"))
        failure = exits.judge_worker(pool, rec, exits.CHILD_BOOT_ERROR, 10.0, False)
        assert (failure is None) == (pid < MAX_BOOT_FAILURES)
    assert isinstance(failure, exits.PoolBootError)
    assert str(failure) == ("pgmq children keep failing at start (5 in a row), giving up: "
                            "ValueError: bad")
    assert caplog.text.count("Traceback...") == 1
    assert caplog.text.count("failed at start again (") == MAX_BOOT_FAILURES - 2


def test_a_healthy_child_crashing_mid_job_is_not_a_boot_failure(channels, caplog):
    pool = Pool(name="sidekiq", backend=None, queues=["q"], size=2)
    for pid in range(1, 10):                 # poison jobs must not stop the supervisor
        rec = record(pool, pid, None, running=JobEntry(id=f"j{pid}", worker="W"))
        assert exits.judge_worker(pool, rec, -signal.SIGSEGV, 10.0, False) is None
    assert pool.boot.failures == 0
    assert "sidekiq child 9 exited unexpectedly (killed by SIGSEGV) running job j9 of W" \
        in caplog.text


def test_expected_exits_say_nothing(channels, caplog):
    pool = Pool(name="pgmq", backend=None, queues=["q"], size=2)
    caplog.set_level(logging.WARNING)
    stopped = record(pool, 1, None, stop_sent=True)
    killed = record(pool, 2, None, kill_reason="shutdown", running=JobEntry(id="j"))
    assert exits.judge_worker(pool, stopped, 0, 1.0, False) is None
    assert exits.judge_worker(pool, killed, -9, 1.0, True) is None
    pool.recycling = 3
    recycled = record(pool, 3, None, stop_sent=True)
    assert exits.judge_worker(pool, recycled, 0, 1.0, False) is None
    assert pool.recycling is None and caplog.text == ""


def test_describe_exit():
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-9) == "killed by SIGKILL"


# -- the supervisor's decisions -----------------------------------------------------------

@pytest.fixture
def supervisor():
    registry = jobrunner.Registry()
    return Supervisor(registry, settings=Settings(processes=3, shutdown_timeout=5))


def stops_sent(rec, theirs):
    return [m.kind for m in theirs.receive()].count("stop")


def test_two_ttou_in_a_row_stop_two_different_children(supervisor, channels):
    pool = Pool(name="pgmq", backend=None, queues=["q"], size=3)
    supervisor.pools = [pool]
    ends = {}
    for pid in (1, 2, 3):
        ours, theirs = channels()
        ends[pid] = theirs
        record(pool, pid, ours, spawned_at=float(pid), running=JobEntry(id="j") if pid == 3 else None)
    supervisor._resize(-1)
    supervisor._resize(-1)                   # before the first stopped child has exited
    assert pool.size == 1
    stopped = [pid for pid, rec in pool.children.items() if rec.stop_sent]
    assert stopped == [1, 2]                 # idle ones first, the youngest first
    assert [stops_sent(pool.children[p], ends[p]) for p in (1, 2, 3)] == [1, 1, 0]
    supervisor._resize(-1)
    assert pool.size == 1 and len(pool.active()) == 1


def test_recycling_is_granted_one_child_at_a_time(supervisor, channels):
    pool = Pool(name="pgmq", backend=None, queues=["q"], size=2)
    supervisor.pools = [pool]
    a = record(pool, 1, channels()[0], wants_recycle=True)
    b = record(pool, 2, channels()[0], wants_recycle=True)
    pool.grant_recycle()
    assert a.stop_sent and not b.stop_sent and pool.recycling == 1
    pool.grant_recycle()
    assert not b.stop_sent                   # a has not exited yet
    del pool.children[1]
    new = record(pool, 3, channels()[0], ready=False)
    pool.grant_recycle()
    assert not b.stop_sent                   # its replacement is not ready yet
    new.ready = True
    pool.grant_recycle()
    assert b.stop_sent and pool.recycling == 2


def test_stop_then_second_stop_moves_the_deadline_to_now(supervisor, channels):
    pool = Pool(name="pgmq", backend=None, queues=["q"], size=1)
    supervisor.pools = [pool]
    ours, theirs = channels()
    rec = record(pool, 1, ours)
    supervisor._begin_stop("SIGTERM")
    assert rec.stop_sent and supervisor.deadline - time.monotonic() > 4
    supervisor._begin_stop("SIGINT")
    assert supervisor.deadline <= time.monotonic()
    supervisor.handle_SIGTSTP(signal.SIGTSTP)   # ignored while stopping
    supervisor._resize(+1)
    assert pool.size == 1 and [m.kind for m in theirs.receive()] == ["stop"]


# -- signals ------------------------------------------------------------------------------

def test_signal_handlers_only_record_and_wake_the_loop():
    queue = SignalQueue()
    queue.install()
    main = threading.main_thread().ident    # pytest-timeout runs a thread: aim at this one
    try:
        signal.pthread_kill(main, signal.SIGTTIN)
        signal.pthread_kill(main, signal.SIGTSTP)   # recorded, not obeyed: the process goes on
        readable, _, _ = select.select([queue.fileno()], [], [], 2)
        assert readable == [queue.fileno()]
        queue.drain()
        assert sorted(queue.take()) == [signal.SIGTSTP, signal.SIGTTIN]
        with queue.blocked():
            signal.pthread_kill(main, signal.SIGTTOU)
            assert list(queue.take()) == []   # held while forking...
        assert list(queue.take()) == [signal.SIGTTOU]   # ...delivered right after
    finally:
        queue.restore()
    assert signal.getsignal(signal.SIGTTIN) == signal.SIG_DFL

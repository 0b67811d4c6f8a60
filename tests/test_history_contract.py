"""``Inspector.history`` on every backend: the runs per minute that housekeepers wrote.

A housekeeper's tick stores the snapshot's ``settled`` counts (``SupervisorSnapshot``): its
supervisor's totals so far for each recent minute. Run on "memory", "pgmq" and "sidekiq"
through the harness of ``contract_support.py``. pgmq's table is shared by every test of the
session (a real supervisor of another test may have written the same minutes), so each case
compares what ``history`` shows after its ticks with what it showed before.
"""

from helpers import wait_for

MINUTE = 60


def this_minute(contract):
    """The start of the backend's current minute, once it has at least 10 s left: a case
    takes well under a second, so its window does not move on under it (and a case that
    starts late in a minute waits at most 10 s for the next)."""
    wait_for(lambda: contract.now() % MINUTE < 50, timeout=20, message="a fresh minute")
    return int(contract.now() // MINUTE) * MINUTE


def by_minute(entries):
    return {entry["minute"]: (entry["processed"], entry["failed"]) for entry in entries}


def added(before, after):
    """Per minute of ``after``, what it shows beyond ``before``."""
    old = by_minute(before)
    return {minute: (processed - old.get(minute, (0, 0))[0], failed - old.get(minute, (0, 0))[1])
            for minute, (processed, failed) in by_minute(after).items()}


def test_a_tick_stores_the_settled_minutes_oldest_first_with_zeros_between(contract):
    now = this_minute(contract)
    before = contract.inspector.history(5)
    contract.housekeeper.tick(contract.state(settled={now - 3 * MINUTE: (4, 1),
                                                      now - MINUTE: (2, 0)}))
    after = contract.inspector.history(5)
    assert [entry["minute"] for entry in after] == [now - back * MINUTE for back in (4, 3, 2, 1, 0)]
    assert all(set(entry) == {"minute", "processed", "failed"} for entry in after)
    assert all(type(entry[key]) is int for entry in after for key in entry)
    assert added(before, after) == {now - 4 * MINUTE: (0, 0), now - 3 * MINUTE: (4, 1),
                                    now - 2 * MINUTE: (0, 0), now - MINUTE: (2, 0), now: (0, 0)}
    assert len(contract.inspector.history(60)) == 60
    assert len(contract.inspector.history(1440)) == 1440
    assert contract.inspector.history(0) == []


def test_counts_are_totals_so_far_so_a_snapshot_written_again_adds_nothing(contract):
    now = this_minute(contract)
    before = contract.inspector.history(3)
    state = contract.state(settled={now - MINUTE: (3, 1), now: (1, 0)})
    contract.housekeeper.tick(state)
    contract.housekeeper.tick(state)                    # the same snapshot at the next tick
    contract.housekeeper.tick(contract.state(settled={now - MINUTE: (5, 2), now: (1, 0)}))
    assert added(before, contract.inspector.history(3)) == {
        now - 2 * MINUTE: (0, 0), now - MINUTE: (5, 2), now: (1, 0)}
    # A late or repeated older snapshot never takes a count back.
    contract.housekeeper.tick(contract.state(settled={now - MINUTE: (3, 1)}))
    assert added(before, contract.inspector.history(3))[now - MINUTE] == (5, 2)


def test_the_counts_of_two_supervisors_add_up(contract):
    now = this_minute(contract)
    before = contract.inspector.history(2)
    other = contract.identity + "-other"
    second = contract.backend.housekeeper(other)
    try:
        contract.housekeeper.tick(contract.state(settled={now - MINUTE: (2, 1), now: (1, 1)}))
        second.tick(contract.state(identity=other, settled={now - MINUTE: (5, 0)}))
    finally:
        second.close()
    assert added(before, contract.inspector.history(2)) == {now - MINUTE: (7, 1), now: (1, 1)}


def test_only_the_minutes_of_the_window_are_returned(contract):
    now = this_minute(contract)
    old, day_old = now - 61 * MINUTE, now - 1439 * MINUTE
    before_hour, before_day = contract.inspector.history(60), contract.inspector.history(1440)
    contract.housekeeper.tick(contract.state(settled={old: (9, 9), day_old: (6, 3)}))
    hour = contract.inspector.history(60)
    assert hour[0]["minute"] == now - 59 * MINUTE and old not in by_minute(hour)
    assert set(added(before_hour, hour).values()) == {(0, 0)}
    day = added(before_day, contract.inspector.history(1440))
    assert (day[old], day[day_old]) == ((9, 9), (6, 3))         # a day is kept
    longer = contract.inspector.history(62)
    assert longer[0]["minute"] == old and added(before_day, longer)[old] == (9, 9)

"""The pure parts of the cluster: book fields, ops, the three-way take, slot plans."""

from __future__ import annotations

from argentd import cluster_books as B
from argentd.cluster_slots import SPARE_TTL, SlotGate, plan, took
from argentd.keystate import KeyState

T = 1_700_000_000.0


def test_books_local_fields_leave_ended_cooldowns_out() -> None:
    ks = KeyState(cooldown_until=T + 60, cooldown_kind="rate_limit",
                  model_cooldowns={"m1": T - 1, "m2": T + 5}, streak={"rate_limit": 2},
                  error_count=2, invalid=True)
    fields = B.local_fields(ks, B.KeyBook(), None, T)
    assert fields == {"c": f"{T + 60!r}|rate_limit", "m:m2": repr(T + 5),
                      "s:rate_limit": "2", "e": "2", "i": "1"}


def test_books_ops_send_changes_and_clear_only_standing_cooldowns() -> None:
    synced = {"c": f"{T + 60!r}|quota", "m:old": repr(T - 5), "s:quota": "3", "e": "3",
              "_v": "7", "r": "x"}
    local = {"s:quota": "4", "e": "4"}
    ops = B.ops(local, synced, T)
    assert ("max", "s:quota", "4") in ops and ("max", "e", "4") in ops
    assert ("del", "c", "") in ops  # a standing cooldown cleared here: a reset
    assert not any(name in ("m:old", "_v", "r") for _, name, _ in ops)


def test_books_three_way_keeps_pending_local_changes_and_takes_the_rest() -> None:
    base = {"c": "100|rate_limit", "e": "1"}
    local = {"c": "100|rate_limit", "e": "2"}  # e changed here, not yet sent
    remote = {"e": "1", "i": "1"}  # another host reset the cooldown and set invalid
    assert B.three_way(local, base, remote) == {"e": "2", "i": "1"}


def test_books_take_a_reply_that_changed_nothing_brings_the_larger_count() -> None:
    # The merge after Redis came back empty: b pushed its 3 first and a heard it
    # (against the merge's empty base a's 2 stands), then a's push of 2 changed
    # nothing: its reply, at the version already held, must bring the 3.
    book = B.KeyBook()
    assert B.take(book, {"e": "2"}, {"e": "3", "_v": "1"}, None) == {"e": "2"}
    assert B.take(book, {"e": "2"}, {"e": "3", "_v": "1"}, [("max", "e", "2")]) == {"e": "3"}
    assert (book.synced, book.version) == ({"e": "3"}, 1)
    assert B.take(book, {"e": "3"}, {"e": "3", "_v": "1"}, None) is None  # heard again: once
    assert B.take(book, {"e": "3"}, {"e": "2", "_v": "0"}, [("max", "e", "3")]) == {"e": "2"}
    book.version = 5
    assert B.take(book, {"e": "3"}, {"e": "2", "_v": "4"}, []) is None  # an older reply


def test_books_take_a_message_after_the_reply_of_the_ops_it_includes() -> None:
    # a's 2 landed first (v1), b's 3 next (v2): heard in that order, a ends at 3.
    book = B.KeyBook()
    assert B.take(book, {"e": "2"}, {"e": "2", "_v": "1"}, [("max", "e", "2")]) == {"e": "2"}
    assert B.take(book, {"e": "2"}, {"e": "3", "_v": "2"}, None) == {"e": "3"}


def test_books_expected_applies_sent_ops() -> None:
    assert B.expected({"a": "1", "b": "2"}, [("max", "a", "3"), ("del", "b", "")]) == {"a": "3"}


def test_books_to_snapshot_replaces_the_shared_part_only() -> None:
    ks = KeyState(requests=9, cooldown_until=T + 1, streak={"quota": 1})
    snap = B.to_snapshot(ks, {"m:x": repr(T + 30), "s:rate_limit": "2", "i": "1"}, T)
    assert snap.requests == 9 and snap.cooldown_until is None and snap.invalid
    assert snap.model_cooldowns == {"x": T + 30} and snap.streak == {"rate_limit": 2}


def test_books_reading_from_another_host_lowers_the_prediction() -> None:
    ks = KeyState(active=2)
    book = B.KeyBook()
    fields = {"r": f"{T!r}|10.0|50.0|0.5|other"}
    assert B.apply_reading(ks, book, fields, "me", T)
    assert ks.known_budget.requests is not None
    assert ks.known_budget.requests.at(T) == 10.0
    assert not B.apply_reading(ks, book, fields, "me", T)  # taken once
    assert not B.apply_reading(KeyState(), B.KeyBook(), {"r": f"{T!r}|1|5||me"}, "me", T)


def test_slots_plan_one_per_lease_plus_a_spare_while_in_demand() -> None:
    gate = SlotGate("k", 3, lambda key: None, connected=True, last_demand=T)
    p = plan(gate, [T + 30, T + 5], T)
    assert p.ttls_ms == [30001, 5001, int(SPARE_TTL * 1000)] and p.keep == 2  # first plan
    assert took(gate, p, 3, T)  # the gate opened
    assert gate.open(2, T) and not gate.open(3, T)
    gate.remote_want = T + 10  # another host waits and ours is idle: no spare
    gate.last_admit = T
    assert plan(gate, [], T + 10).ttls_ms == []


def test_slots_gate_opens_for_all_while_disconnected() -> None:
    pokes: list[str] = []
    gate = SlotGate("k", 1, pokes.append)
    assert gate.open(5, T)
    gate.connected = True
    assert not gate.open(0, T)
    gate.refused(0, T)
    assert gate.wanted and pokes == ["k"]


def test_books_a_short_cooldown_stays_on_its_host() -> None:
    local = {"c": f"{T + 1!r}|rate_limit", "m:x": repr(T + 3600)}
    ops = B.ops(local, {}, T)
    assert ops == [("max", "m:x", repr(T + 3600))]  # the 1 s pause is not shared
    # A long one taken from another host is not cleared in its last seconds either.
    assert B.ops({"c": f"{T + 2!r}|quota"}, {"c": f"{T + 2!r}|quota"}, T) == []


def test_inflight_counts_fade_and_lower_a_fresh_reading() -> None:
    from argentd.budget import Bucket, Budget
    from argentd.cluster_inflight import STALE, InFlight

    f = InFlight()
    assert f.to_send([("k", 2), ("j", 0)], T) == {"k": 2, "j": 0}
    assert f.to_send([("k", 2), ("j", 0)], T + 0.1) == {}  # unchanged, not yet due
    assert f.to_send([("k", 2)], T + 1.5) == {"k": 2}  # nonzero: said again
    f.heard("b", {"k": 3}, T)
    assert f.others("k", T + 1) == 3 and f.others("k", T + STALE + 0.1) == 0
    ks = KeyState(budget=Budget(requests=Bucket(limit=10, level=6, rate=None, t=T),
                                reported_grant=4))
    assert f.after_change("k", ks, T + 1)  # a new reading: the 3 out on b come off
    assert ks.known_budget.requests is not None and ks.known_budget.requests.at(T + 1) == 3
    assert not f.after_change("k", ks, T + 1)  # the same reading: once


def test_books_windows_reading_reaches_the_other_host() -> None:
    from argentd.budget import Budget, Window

    budget = Budget(unified_status="allowed", unified_reset=T + 900,
                    windows={"5h": Window(utilization=0.93, reset=T + 900, status="allowed")})
    fields = B.reading_fields(budget, "a", T)
    ks = KeyState()
    assert B.apply_reading(ks, B.KeyBook(), fields, "b", T)
    got = ks.known_budget
    assert got.unified_status == "allowed" and got.windows["5h"].utilization == 0.93
    assert not B.apply_reading(KeyState(), B.KeyBook(), fields, "a", T)  # its own

"""Books are per secret and outlive a reload that loses a profile for a moment
(`argentd/books.py`), and a lease's count stays with the secret it holds."""

from __future__ import annotations

import msgspec
import pytest

from argent_client.protocol import NoProfileAvailable
from argentd.books import MAX_ORPHANS, ORPHAN_KEEP
from argentd.cooldown import MAX_MODEL_COOLDOWNS, MAX_MODEL_NAME
from argentd.engine import Engine
from argentd.model import ProfileSet
from argentd.snapshot import decode_snapshot

from .test_engine import T0, ids, lease, make, prof, reload, report


def three() -> Engine:
    e = make(prof("anthropic:cool"), prof("anthropic:bad"), prof("anthropic:off"))
    report(e, T0, "quota", profile="anthropic:cool")  # 5 h
    report(e, T0, "auth", profile="anthropic:bad")
    e.set_disabled("anthropic:off", True, now=T0)
    return e


def states(e: Engine, now: float) -> dict[str, str]:
    return {p.id: e.state_of(p.id, now) for p in e.profiles()}


EXPECTED = {"anthropic:cool": "cooldown", "anthropic:bad": "invalid",
            "anthropic:off": "disabled"}


def test_books_survive_a_file_deleted_and_recreated() -> None:
    e = three()
    reload(e, now=T0 + 1)  # the editor's save: the file is gone for 80 ms
    reload(e, prof("anthropic:cool"), prof("anthropic:bad"), prof("anthropic:off"),
           now=T0 + 1.08)
    assert states(e, T0 + 2) == EXPECTED


def test_books_survive_a_restart_while_the_profiles_were_missing() -> None:
    e = three()
    reload(e, now=T0 + 1)  # one failing `cmd:` run, or a typo: the profiles are skipped
    saved = msgspec.json.encode(e.snapshot())  # ... and the state gets saved then
    fresh = Engine(ProfileSet(), e.config, now=T0 + 2, lease_id=ids())
    fresh.restore(decode_snapshot(msgspec.json.decode(saved)), now=T0 + 2)
    assert fresh.snapshot() == decode_snapshot(msgspec.json.decode(saved))
    reload(fresh, prof("anthropic:cool"), prof("anthropic:bad"), prof("anthropic:off"),
           now=T0 + 3)
    assert states(fresh, T0 + 3) == EXPECTED
    assert fresh.next_deadline() == T0 + 5 * 3600  # the restored cooldown still ends


def test_books_of_a_broken_file_at_start_are_not_lost() -> None:
    # At start a broken file leaves the engine with no profile: restoring the
    # state file and saving it again must keep the books of the secrets it lacks.
    saved = three().snapshot()
    fresh = Engine(ProfileSet(), make().config, now=T0 + 1)
    fresh.restore(saved, now=T0 + 1)
    assert set(fresh.snapshot().keys) == set(saved.keys)
    assert [f.profile for f in fresh.snapshot().kept_flags] == ["anthropic:off"]


def test_books_disable_flag_follows_the_secret() -> None:
    e = make(prof("anthropic:a"))
    e.set_disabled("anthropic:a", True, now=T0)
    reload(e, prof("anthropic:a", tag="other"), now=T0 + 1)
    assert e.state_of("anthropic:a", T0 + 1) == "ready"  # a new secret starts clean
    reload(e, prof("anthropic:a"), now=T0 + 2)
    assert e.state_of("anthropic:a", T0 + 2) == "disabled"  # and the old one comes back


def test_books_orphans_are_dropped_after_orphan_keep() -> None:
    e = three()
    reload(e, now=T0 + 1)
    e.advance(T0 + 1 + ORPHAN_KEEP)
    reload(e, now=T0 + 1 + ORPHAN_KEEP)  # gone for a week: for good
    snap = e.snapshot()
    assert (snap.keys, snap.kept_flags) == ({}, [])


def test_books_orphans_are_bounded() -> None:
    e = make()
    for i in range(MAX_ORPHANS + 5):
        reload(e, prof(f"anthropic:p{i}"), now=T0 + i)
    reload(e, now=T0 + MAX_ORPHANS + 5)
    assert len(e.snapshot().keys) == MAX_ORPHANS
    assert e.snapshot().keys.keys().isdisjoint(
        {prof(f"anthropic:p{i}").secret.key for i in range(5)})  # the oldest went first


def test_books_lease_count_survives_a_secret_swapped_out_and_back() -> None:
    e = make(prof("anthropic:a"))
    held = lease(e, provider="anthropic")
    reload(e, prof("anthropic:a", tag="other"), now=T0 + 1)
    reload(e, prof("anthropic:a"), now=T0 + 2)
    assert e.key_state("anthropic:a").active == 1
    e.release(held.lease_id, now=T0 + 3)
    assert e.key_state("anthropic:a").active == 0


def test_books_a_probing_key_swapped_out_and_back_gives_one_lease_at_a_time() -> None:
    e = make(prof("anthropic:a"))
    now = T0
    for _ in range(3):  # three rate limits in a row: probed on the way out
        until, _ = report(e, now, "rate_limit", profile="anthropic:a")
        assert until is not None
        now = until
    e.advance(now)
    probe = lease(e, now, provider="anthropic")
    reload(e, prof("anthropic:a", tag="other"), now=now + 1)
    reload(e, prof("anthropic:a"), now=now + 2)
    with pytest.raises(NoProfileAvailable) as info:
        lease(e, now + 3, provider="anthropic")  # the probe is still out
    assert info.value.data["profiles"][0]["state"] == "probing"
    e.release(probe.lease_id, now=now + 4)  # it succeeded: probing is over
    assert e.key_state("anthropic:a").active == 0
    lease(e, now + 5, provider="anthropic")
    lease(e, now + 5, provider="anthropic")
    assert e.key_state("anthropic:a").active == 2


def test_books_model_cooldowns_are_bounded_in_name_and_number() -> None:
    # Issue 10: unique 2 KB model names grew state.json to 20 MB.
    e = make(prof("anthropic:a"))
    for i in range(1000):
        report(e, T0, "rate_limit", profile="anthropic:a", model=f"{i:04d}" + "m" * 2048,
               retry_after=600)
    ks = e.key_state("anthropic:a")
    assert ks.model_cooldowns == {}
    assert ks.cooldown_until == T0 + 600  # a name that long cools the whole profile
    e.reset("anthropic:a", now=T0)
    for i in range(MAX_MODEL_COOLDOWNS + 4):
        report(e, T0, "rate_limit", profile="anthropic:a", model=f"claude-{i}",
               retry_after=600 + i)
    assert len(ks.model_cooldowns) == MAX_MODEL_COOLDOWNS
    # the 17th model cooling at once: the profile is the problem
    assert ks.cooldown_until == T0 + 600 + MAX_MODEL_COOLDOWNS
    assert len(msgspec.json.encode(e.snapshot())) < 2000


def test_books_an_old_state_file_with_many_model_cooldowns_is_cut_down() -> None:
    e = make(prof("anthropic:a"))
    snap = e.snapshot()
    key = e.profile("anthropic:a").secret.key
    many = {f"m{i}" + ("x" * 300 if i % 2 else ""): T0 + 100 + i for i in range(100)}
    snap.keys[key].model_cooldowns = many
    fresh = make(prof("anthropic:a"))
    fresh.restore(snap, now=T0)
    kept = fresh.key_state("anthropic:a").model_cooldowns
    # the short names only, the latest-ending first: m98, m96, ...
    assert sorted(kept) == sorted(f"m{i}" for i in range(98, 98 - 2 * MAX_MODEL_COOLDOWNS, -2))
    assert all(len(m) <= MAX_MODEL_NAME for m in kept)

"""The engine's books: a `Slot` per profile id, a `KeyState` per secret, what
a reload does to them (`merge`), and their persistent form (`state.json`,
shaped by snapshot.py).

State is kept per *secret* (`Secret.key`): two profiles holding one secret
share one cooldown, and a changed secret starts clean. The books know
nothing of time; the engine counts leases in and out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from . import cooldown
from .keystate import KeyState
from .model import Profile
from .snapshot import KeptFlag, ProfileSnapshot, Snapshot


@dataclass(slots=True)
class Slot:
    """One profile id: its current Profile and runtime flags."""

    profile: Profile
    seq: int = 0
    """Order of the last grant; lower was leased longer ago (spreads load)."""
    active: int = 0
    user_disabled: bool | None = None
    """Set by disable/enable; None follows the file's `disabled`."""
    removed: bool = False
    """Gone from the file, kept only while its leases finish."""

    @property
    def key(self) -> str:
        """Its secret's key (`KeyState`s are kept per secret)."""
        return self.profile.secret.key

    @property
    def disabled(self) -> bool:
        """Disabled by the user, or else by the file."""
        if self.user_disabled is not None:
            return self.user_disabled
        return self.profile.disabled


ORPHAN_KEEP: Final = 7 * 24 * 3600.0
"""Seconds the books of a secret no loaded profile holds are kept (and saved)."""
MAX_ORPHANS: Final = 1000
"""Secrets (and profile flags) kept beyond that many, oldest first, are dropped."""


class Books:
    """Profile slots and per-secret state; `slots` and `keys` are shared with
    the selector by reference (never replaced).

    Books are per secret and outlive the profile that held it: a reload that
    loses a profile for a moment (an editor's save, one failing `cmd:` run, a
    typo fixed later) must not wipe its cooldown, `invalid` mark or disable
    flag. A secret no loaded profile holds is *orphaned* (`orphaned_at`): its
    state stays, is saved, and comes back with the secret, for ORPHAN_KEEP
    seconds (at most MAX_ORPHANS of them). A profile's user flag is kept the
    same way (`flags`), keyed by profile id and secret. State a lease still
    uses is never dropped.
    """

    def __init__(self) -> None:
        self.slots: dict[str, Slot] = {}
        self.keys: dict[str, KeyState] = {}
        self.flags: dict[tuple[str, str], KeptFlag] = {}
        """(profile id, secret key) -> a user flag set with a secret that profile
        no longer holds."""

    def merge(self, profiles: list[Profile], now: float) -> None:
        """Take a reload's profiles (the first of a repeated id wins).

        Unchanged profiles keep their state; a changed secret starts clean
        (its old state is kept, orphaned, should it come back); removed
        profiles stay, marked `removed`, while their leases finish.
        """
        slots, keys = self.slots, self.keys
        new_ids: set[str] = set()
        loaded: set[str] = set()
        for p in profiles:  # written for 10,000 profiles: locals, no helper calls
            pid, key = p.id, p.secret.key
            if pid in new_ids:
                continue
            new_ids.add(pid)
            loaded.add(key)
            ks = keys.get(key)
            if ks is None:
                keys[key] = KeyState()
            elif ks.orphaned_at is not None:
                ks.orphaned_at = None
            slot = slots.get(pid)
            if slot is None:
                slot = slots[pid] = Slot(p)
            else:
                if slot.profile.secret.key != key:
                    self._keep_flag(slot, now)
                    slot.user_disabled = None
                slot.profile = p
                slot.removed = False
            if self.flags:
                kept = self.flags.pop((pid, key), None)
                if kept is not None and slot.user_disabled is None:
                    slot.user_disabled = kept.user_disabled
        for pid in [pid for pid in slots if pid not in new_ids]:
            slot = slots[pid]
            self._keep_flag(slot, now)
            if slot.active:
                slot.removed = True
            else:
                del slots[pid]
        self.forget_unused(now, loaded)

    def _keep_flag(self, slot: Slot, now: float) -> None:
        if slot.user_disabled is not None:
            pid = slot.profile.id
            self.flags[(pid, slot.key)] = KeptFlag(pid, slot.key, slot.user_disabled, now)

    def lease_ended(self, slot: Slot, now: float) -> None:
        """One of `slot`'s leases ended: a removed slot goes with its last lease."""
        slot.active -= 1
        if slot.removed and slot.active == 0:
            del self.slots[slot.profile.id]
            self.forget_unused(now)

    def ensure(self, key: str) -> KeyState:
        """The state of `key`, made on first sight."""
        ks = self.keys.get(key)
        if ks is None:
            ks = self.keys[key] = KeyState()
        return ks

    def forget_unused(self, now: float, loaded: set[str] | None = None) -> None:
        """Orphan the state of secrets no loaded profile holds (`loaded`, when the
        caller knows); drop orphans (and kept flags) older than ORPHAN_KEEP or
        beyond the MAX_ORPHANS newest."""
        if loaded is None:
            loaded = {s.key for s in self.slots.values() if not s.removed}
        if len(loaded) == len(self.keys) and not self.flags:
            return  # every secret known is loaded: nothing is orphaned
        orphans = []
        for key, ks in self.keys.items():
            if key in loaded:
                continue
            if ks.orphaned_at is None:
                ks.orphaned_at = now
            if ks.active == 0:  # a lease out still counts on it
                orphans.append((ks.orphaned_at, key))
        orphans.sort(reverse=True)
        for i, (since, key) in enumerate(orphans):
            if i >= MAX_ORPHANS or now - since >= ORPHAN_KEEP:
                del self.keys[key]
        flags = sorted(((f.since, at) for at, f in self.flags.items()), reverse=True)
        for i, (since, at) in enumerate(flags):
            if i >= MAX_ORPHANS or now - since >= ORPHAN_KEEP:
                del self.flags[at]

    def snapshot(self, now: float) -> Snapshot:
        """The persistent state at `now`: every secret's books, orphans included
        (but not those past ORPHAN_KEEP), and the flags of the loaded profiles
        (removed ones left out) and of `flags`."""
        keys = {key: ks.to_snapshot() for key, ks in self.keys.items()
                if ks.orphaned_at is None or now - ks.orphaned_at < ORPHAN_KEEP}
        profiles = {
            pid: ProfileSnapshot(key=s.key, user_disabled=s.user_disabled)
            for pid, s in self.slots.items()
            if not s.removed
        }
        kept = [self.flags[at] for at in sorted(self.flags)
                if now - self.flags[at].since < ORPHAN_KEEP]
        return Snapshot(keys=keys, profiles=profiles, kept_flags=kept)

    def restore(self, snap: Snapshot, now: float) -> list[tuple[float, str, str]]:
        """Take back `snap`: the books of the secrets loaded now, and as orphans
        those of the others (a broken file at start must not lose them);
        returns each cooldown restored as (until, key, model or "") for the
        engine's wake-up heap."""
        restored = []
        loaded = {s.key for s in self.slots.values() if not s.removed}
        for key, k in snap.keys.items():
            ks = self.ensure(key)
            ks.restore(k)
            cooldown.bound(ks)
            if key in loaded:
                ks.orphaned_at = None
            elif ks.orphaned_at is None:
                ks.orphaned_at = now
            restored += [(until, key, model) for until, model in cooldown.entries(ks)]
        for pid, ps in snap.profiles.items():
            slot = self.slots.get(pid)
            if slot is not None and slot.key == ps.key:
                slot.user_disabled = ps.user_disabled
            elif ps.user_disabled is not None:
                self.flags[(pid, ps.key)] = KeptFlag(pid, ps.key, ps.user_disabled, now)
        for f in snap.kept_flags:
            slot = self.slots.get(f.profile)
            if slot is not None and slot.key == f.key:
                if slot.user_disabled is None:
                    slot.user_disabled = f.user_disabled
            else:
                self.flags.setdefault((f.profile, f.key), f)
        self.forget_unused(now)
        return restored

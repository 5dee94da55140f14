"""The engine's books: a `Slot` per profile id, a `KeyState` per secret, what
a reload does to them (`merge`), and their persistent form (`state.json`,
shaped by snapshot.py).

State is kept per *secret* (`Secret.key`): two profiles holding one secret
share one cooldown, and a changed secret starts clean. The books know
nothing of time; the engine counts leases in and out.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import cooldown
from .keystate import KeyState
from .model import Profile
from .snapshot import ProfileSnapshot, Snapshot


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


class Books:
    """Profile slots and per-secret state; `slots` and `keys` are shared with
    the selector by reference (never replaced)."""

    def __init__(self) -> None:
        self.slots: dict[str, Slot] = {}
        self.keys: dict[str, KeyState] = {}

    def merge(self, profiles: list[Profile]) -> None:
        """Take a reload's profiles (the first of a repeated id wins).

        Unchanged profiles keep their state; a changed secret starts clean;
        removed profiles stay, marked `removed`, while their leases finish.
        """
        slots = self.slots
        new_ids = set()
        for p in profiles:
            if p.id in new_ids:
                continue
            new_ids.add(p.id)
            self.ensure(p.secret.key)
            slot = slots.get(p.id)
            if slot is None:
                slots[p.id] = Slot(p)
                continue
            if slot.key != p.secret.key:
                slot.user_disabled = None
            slot.profile = p
            slot.removed = False
        for pid in [pid for pid in slots if pid not in new_ids]:
            if slots[pid].active:
                slots[pid].removed = True
            else:
                del slots[pid]
        self.forget_unused()

    def lease_ended(self, slot: Slot) -> None:
        """One of `slot`'s leases ended: a removed slot goes with its last lease."""
        slot.active -= 1
        if slot.removed and slot.active == 0:
            del self.slots[slot.profile.id]
            self.forget_unused()

    def ensure(self, key: str) -> KeyState:
        """The state of `key`, made on first sight."""
        ks = self.keys.get(key)
        if ks is None:
            ks = self.keys[key] = KeyState()
        return ks

    def forget_unused(self) -> None:
        """Drop the state of secrets no slot holds."""
        used = {s.key for s in self.slots.values()}
        for key in [k for k in self.keys if k not in used]:
            del self.keys[key]

    def snapshot(self) -> Snapshot:
        """The persistent state of the secrets the slots hold (removed slots left out)."""
        slots = self.slots
        loaded = {s.key for s in slots.values() if not s.removed}
        keys = {key: ks.to_snapshot() for key, ks in self.keys.items() if key in loaded}
        profiles = {
            pid: ProfileSnapshot(key=s.key, user_disabled=s.user_disabled)
            for pid, s in slots.items()
            if not s.removed
        }
        return Snapshot(keys=keys, profiles=profiles)

    def restore(self, snap: Snapshot) -> list[tuple[float, str, str]]:
        """Take back `snap` for every secret still held; returns each cooldown
        restored as (until, key, model or "") for the engine's wake-up heap."""
        restored = []
        for key, k in snap.keys.items():
            ks = self.keys.get(key)
            if ks is None:
                continue
            ks.restore(k)
            restored += [(until, key, model) for until, model in cooldown.entries(ks)]
        for pid, ps in snap.profiles.items():
            slot = self.slots.get(pid)
            if slot is not None and slot.key == ps.key:
                slot.user_disabled = ps.user_disabled
        return restored

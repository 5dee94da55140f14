"""The shared books of one secret as Redis holds them, and how they meet the engine's.

Theory of operation
-------------------
A secret's *book* is a flat map of fields (a Redis hash under
`{name}:book:{key}`, `key` being `Secret.key`: no secret ever goes there):

| field | value | merge |
|---|---|---|
| `c` | `until|kind`: the profile-wide cooldown | later end wins |
| `m:MODEL` | `until`: a model's cooldown | later end wins |
| `s:KIND` | failures of KIND in a row | larger count wins |
| `e` | error count since the last success | larger wins |
| `i` | `1`: invalid (an auth failure) | set wins |
| `d` | `at|0|1`: the user's disable flag | later toggle wins |
| `r`, `t` | `at|level|limit|rate|host`: a request / token budget reading | later reading wins |
| `u` | `at|host|JSON`: the subscription windows (status, reset, each window) | later reading wins |
| `_v` | the book's version, raised by every change | (Redis' own) |

Every value starts with the number its merge compares, so Redis applies
one generic rule (`max`, see cluster_scripts.py); `del` ops carry what is
not monotone: a success clears streaks and errors, a reset clears all.

A host keeps, per key, `synced`: the last state it took from Redis (a
reply or a pub/sub message, newest version only). Its own changes are the
fields where the engine's view (`local_fields`) differs from `synced`
(`ops`). A newer remote state is taken in three-way (`take`): a field
the host changed and has not yet seen come back keeps the local value,
every other field takes the remote one, so a reset on another host clears
a cooldown here too. The reply to a host's own ops is taken against
`synced` with those ops applied (`expected`), even at the version already
held: ops that changed nothing met values as large or larger, which must
win here too. A message heard while the host's ops are on their way is
taken after their reply (cluster.py holds it): taken before, against a
base without those ops, it would keep the local values they carried
over the other host's larger ones, and the reply, older or no newer, would
then be dropped. Budget readings are not merged field by field: a
newer reading from another host lowers the local prediction (the smaller
remaining wins, `apply_reading`), and each reading taken here is lowered by
the other hosts' leases in flight (cluster_inflight.py).

Pure: no I/O, no clock; every function takes `now`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from .budget import Bucket, Budget, Window
from .keystate import KeyState
from .snapshot import KeySnapshot

Fields = dict[str, str]
Op = tuple[str, str, str]
"""(`max` | `del`, field, value)."""

READING_EVERY: Final = 0.1
"""Seconds between two budget readings of one key published (a key leased
hundreds of times a second would cost a script each; the request budget
itself is shared through cluster_budgets.py)."""
READINGS: Final = ("r", "t", "u")
"""Budget fields: merged by `apply_reading`, not three-way."""


def _num(value: str) -> float:
    head = value.split("|", 1)[0]
    try:
        return float(head)
    except ValueError:
        return float("-inf")


def _fmt(x: float) -> str:
    return repr(float(x))


@dataclass(slots=True)
class KeyBook:
    """What one host knows of one key's shared book."""

    synced: Fields = field(default_factory=dict)
    version: int = 0
    disabled: tuple[bool | None, float] = (None, 0.0)
    """(the local disable flag last seen, when it changed)."""
    reading: tuple[object, ...] = ()
    """Signature of the last budget reading published (see `reading_signature`)."""
    reading_at: float = float("-inf")
    """When it was published: the next waits READING_EVERY."""
    applied: dict[str, float] = field(default_factory=dict)
    """Reading field -> `at` of the newest remote reading taken into the budget."""


def disabled_flag(flags: Iterable[bool | None]) -> bool | None:
    """One key's disable flag over the profiles holding it (True wins over False)."""
    out: bool | None = None
    for f in flags:
        if f is True:
            return True
        if f is False:
            out = False
    return out


def local_fields(ks: KeyState, book: KeyBook, disabled: bool | None, now: float) -> Fields:
    """The engine's view of a key's book at `now` (cooldowns that ended are left out)."""
    out: Fields = {}
    if ks.cooldown_until is not None and ks.cooldown_until > now:
        out["c"] = f"{_fmt(ks.cooldown_until)}|{ks.cooldown_kind or ''}"
    for model, until in ks.model_cooldowns.items():
        if until > now:
            out["m:" + model] = _fmt(until)
    for kind, n in ks.streak.items():
        if n > 0:
            out["s:" + kind] = str(n)
    if ks.error_count > 0:
        out["e"] = str(ks.error_count)
    if ks.invalid:
        out["i"] = "1"
    flag, at = book.disabled
    if disabled != flag:
        flag, at = disabled, now
        book.disabled = (flag, at)
    if flag is not None:
        out["d"] = f"{_fmt(at)}|{int(flag)}"
    return out


LOCAL_COOLDOWN: Final = 5.0
"""Seconds: a cooldown this short when first seen here is not shared. A 429's
`retry-after` is whole seconds, coarser than the key's refill; each host
holds the key until its budget refills, from the reading every host gets,
and a 1 s pause shared by every host would cost each 429 that many times."""


def _cooldown(name: str) -> bool:
    return name == "c" or name.startswith("m:")


def _live(name: str, value: str, now: float) -> bool:
    """Whether a field still stands at `now` (an ended cooldown does not)."""
    if name == "c" or name.startswith("m:"):
        return _num(value) > now
    return True


def ops(local: Fields, synced: Fields, now: float) -> list[Op]:
    """The changes to send: what `local` has that `synced` lacks, and what it cleared.

    A cooldown missing locally is cleared remotely only while it still
    stands (an ended one simply ran out, everywhere at once).
    """
    out: list[Op] = []
    for name, value in local.items():
        if synced.get(name) == value:
            continue
        if _cooldown(name) and name not in synced and _num(value) - now <= LOCAL_COOLDOWN:
            continue  # a short cooldown stays here: the others learn the budget's reading
        out.append(("max", name, value))
    for name, value in synced.items():
        if name == "_v" or name in READINGS or name in local or name == "d":
            continue
        if _live(name, value, now):
            out.append(("del", name, ""))
    return out


def three_way(local: Fields, base: Fields, remote: Fields) -> Fields:
    """The new local book: local changes not yet in `base` kept, the rest from `remote`."""
    out: Fields = {}
    for name in set(local) | set(base) | set(remote):
        if name == "_v" or name in READINGS:
            continue
        value = local.get(name) if local.get(name) != base.get(name) else remote.get(name)
        if value is not None:
            out[name] = value
    return out


def take(book: KeyBook, local: Fields, remote: Fields, sent: Iterable[Op] | None) -> Fields | None:
    """Take `remote` (a book as Redis holds it, with its `_v`) into `book`: the new
    shared fields (`three_way` of the engine's view `local`), or None when a
    state as new (for a message) or newer (for a reply) was already taken.
    `sent`: the ops whose reply `remote` is, or None for a message. Sets
    `book.synced` and `book.version`."""
    fields = dict(remote)
    version = int(_num(fields.pop("_v", "0")))
    if version and (version < book.version or (version == book.version and sent is None)):
        return None
    base = expected(book.synced, sent) if sent is not None else book.synced
    new = three_way(local, base, fields)
    book.synced, book.version = fields, version
    return new


def expected(base: Fields, sent: Iterable[Op]) -> Fields:
    """`base` as it would be after `sent` alone (the base of the reply's three-way)."""
    out = dict(base)
    for op, name, value in sent:
        if op == "del":
            out.pop(name, None)
        else:
            out[name] = value
    return out


def to_snapshot(ks: KeyState, fields: Mapping[str, str], now: float) -> KeySnapshot:
    """`ks`'s persisted state with its shared part replaced by `fields`."""
    snap = ks.to_snapshot()
    snap.cooldown_until = None
    snap.cooldown_kind = None
    snap.model_cooldowns = {}
    snap.streak = {}
    snap.error_count = 0
    snap.invalid = False
    for name, value in fields.items():
        if name == "c":
            until, _, kind = value.partition("|")
            if float(until) > now:
                snap.cooldown_until, snap.cooldown_kind = float(until), kind or None
        elif name.startswith("m:"):
            if _num(value) > now:
                snap.model_cooldowns[name[2:]] = _num(value)
        elif name.startswith("s:"):
            snap.streak[name[2:]] = int(_num(value))
        elif name == "e":
            snap.error_count = int(_num(value))
        elif name == "i":
            snap.invalid = True
    return snap


def remote_disabled(fields: Mapping[str, str]) -> tuple[bool, float] | None:
    """The disable flag a book holds, with when it was set, or None."""
    value = fields.get("d")
    if value is None:
        return None
    at, _, flag = value.partition("|")
    return flag == "1", _num(at)


# ------------------------------------------------------------ budget readings


def reading_signature(budget: Budget | None) -> tuple[object, ...]:
    """What changes when a provider reading was taken (not when a grant is charged)."""
    if budget is None:
        return ()
    r, t = budget.requests, budget.tokens
    return (
        budget.reported_grant,
        None if r is None else (r.limit, r.rate),
        None if t is None else (t.limit, t.rate),
        budget.unified_status, budget.unified_reset,
        tuple((n, w.utilization, w.reset, w.status) for n, w in sorted(budget.windows.items())),
    )


def reading_fields(budget: Budget, host: str, now: float) -> Fields:
    """The budget as readings for other hosts (`r`, `t`, `u`)."""
    out: Fields = {}
    for name, bucket in (("r", budget.requests), ("t", budget.tokens)):
        if bucket is not None:
            rate = "" if bucket.rate is None else _fmt(bucket.rate)
            out[name] = f"{_fmt(now)}|{_fmt(bucket.at(now))}|{_fmt(bucket.limit)}|{rate}|{host}"
    if budget.unified_status is not None or budget.windows:
        windows = {n: [w.utilization, w.reset, w.status] for n, w in budget.windows.items()}
        body = _WINDOWS.encode([budget.unified_status, budget.unified_reset, windows]).decode()
        out["u"] = f"{_fmt(now)}|{host}|{body}"
    return out


_WINDOWS = msgspec.json.Encoder()
_WINDOWS_DECODE = msgspec.json.Decoder(
    tuple[str | None, float | None, dict[str, tuple[float | None, float | None, str | None]]])


def _opt(text: str) -> float | None:
    return float(text) if text else None


def apply_reading(ks: KeyState, book: KeyBook, fields: Mapping[str, str], host: str,
                  now: float) -> bool:
    """Take other hosts' newer budget readings into `ks`'s budget; True if any was.

    A reading lowers the prediction only (the smaller remaining wins); the
    other host's prediction already took every host's leases in flight off
    (cluster_inflight.py).
    """
    taken = False
    for name in READINGS:
        value = fields.get(name)
        if value is None:
            continue
        parts = value.split("|", 2) if name == "u" else value.split("|")
        if (parts[1] if name == "u" else parts[-1]) == host:
            continue
        at = _num(value)
        if at <= book.applied.get(name, float("-inf")):
            continue
        book.applied[name] = at
        taken = True
        budget = ks.own_budget()
        if name == "u":
            status, reset, windows = _WINDOWS_DECODE.decode(parts[2])
            budget.unified_status = status or budget.unified_status
            budget.unified_reset = reset if reset is not None else budget.unified_reset
            for wname, (util, wreset, wstatus) in windows.items():
                budget.windows[wname] = Window(utilization=util, reset=wreset, status=wstatus)
            continue
        _, level_s, limit_s, rate_s = parts[:4]
        level, limit, rate = float(level_s), float(limit_s), _opt(rate_s)
        if rate is not None and now > at:
            level = min(limit, level + rate * (now - at))
        bucket = budget.requests if name == "r" else budget.tokens
        if bucket is None:
            bucket = Bucket(limit=limit, level=level, rate=rate, t=now)
            if name == "r":
                budget.requests = bucket
            else:
                budget.tokens = bucket
            continue
        bucket.limit = limit
        if rate is not None and bucket.rate is None:
            bucket.rate = rate
        bucket.level = min(bucket.at(now), level)
        bucket.t = max(bucket.t, now)
    return taken


def pairs(value: Any) -> Fields:
    """A hash as HGETALL (a flat list, RESP3 a map) or cjson (a list, or {} when empty) gives it."""
    if isinstance(value, dict):
        return {_str(k): _str(v) for k, v in value.items()}
    items = [_str(x) for x in value]
    return dict(zip(items[::2], items[1::2], strict=True))


def _str(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)

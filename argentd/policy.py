"""`[policy]` in argentd.toml: how a profile is picked beyond readiness.

Theory of operation
-------------------
Four rules, each global and (the first two) per client (`[policy.clients.NAME]`,
for leases whose `client` is NAME; a client value replaces the global one):

- `window_cap` (0 < cap, default 1.0): a subscription (setup-token, oauth)
  whose 5-hour or weekly window has reached this utilisation is not leased
  until that window resets (readiness reason `window`);
- `paid_fallback` (`allow` | `notify` | `deny`, default `allow`): may a lease
  of a provider that has subscription profiles fall through to its per-token
  API keys? `notify` emits a `paid_fallback` event once per switch (per
  provider and client); `deny` refuses with `no_profile_available`, whose
  `retry_after` is the soonest a subscription is back;
- `strategy` (`spread` | `fill-first`, global): inside a tier, the least
  recently leased profile first, or the first ready one until it is not;
- `recheck` (seconds, default 900): during a `quota` cooldown longer than
  this, one probe lease is admitted every `recheck` seconds; its success
  ends the cooldown for everyone.

docs/policy.md is the user's page for all of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

import msgspec

Strategy: TypeAlias = Literal["spread", "fill-first"]
PaidFallback: TypeAlias = Literal["allow", "notify", "deny"]
PAID_TYPES: Final = frozenset({"api-key"})
"""Profile types paid per token (the others are subscriptions)."""


class ClientPolicy(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """`[policy.clients.NAME]`: what replaces the global policy for one client."""

    window_cap: float | None = None
    paid_fallback: PaidFallback | None = None

    def __post_init__(self) -> None:
        if self.window_cap is not None and not self.window_cap > 0:
            raise ValueError("window_cap must be > 0")


class PolicyConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """`[policy]`: see the module docstring."""

    strategy: Strategy = "spread"
    window_cap: float = 1.0
    paid_fallback: PaidFallback = "allow"
    recheck: float = 900.0
    clients: dict[str, ClientPolicy] = {}

    def __post_init__(self) -> None:
        if not self.window_cap > 0:
            raise ValueError("window_cap must be > 0")
        if not self.recheck > 0:
            raise ValueError("recheck must be > 0")

    def rules(self, client: str | None) -> Rules:
        """The rules for a lease whose `client` is `client`."""
        own = self.clients.get(client) if client is not None else None
        if own is None:
            return Rules(self.window_cap, self.paid_fallback)
        return Rules(
            own.window_cap if own.window_cap is not None else self.window_cap,
            own.paid_fallback if own.paid_fallback is not None else self.paid_fallback,
        )


@dataclass(frozen=True, slots=True)
class Rules:
    """The policy one lease request is held to."""

    window_cap: float = 1.0
    paid_fallback: PaidFallback = "allow"


DEFAULT_RULES: Final = Rules()


class Switches:
    """`paid_fallback = "notify"`: which (provider, client) leases last fell
    through from the provider's subscriptions to an API key."""

    def __init__(self) -> None:
        self._on_paid: set[tuple[str, str | None]] = set()

    def switched(self, provider: str, client: str | None, paid: bool) -> bool:
        """A lease of `client` on `provider` was granted (an API key when `paid`):
        whether it is a switch onto an API key (to notify once)."""
        at = (provider, client)
        if not paid:
            self._on_paid.discard(at)
            return False
        if at in self._on_paid:
            return False
        self._on_paid.add(at)
        return True

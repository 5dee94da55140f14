"""The protocol's types that describe profiles: what they are, what a provider
said about their limits, and the `status` reply.

Part of the wire protocol (`protocol.py` re-exports every name here, so
`protocol.StatusResult` is this class). It imports nothing of argentd or
the client: the daemon builds these (views.py), argentctl renders them.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import msgspec

ProfileType: TypeAlias = Literal["setup-token", "api-key", "oauth"]
ProfileState: TypeAlias = Literal["ready", "cooldown", "disabled", "invalid", "expired"]
Source: TypeAlias = Literal["profile", "env"]


class Limits(msgspec.Struct, omit_defaults=True):
    """What the provider's last response said about a profile's budget.

    Resets are Unix seconds; utilisations are fractions (0.0-1.0).
    """

    requests_limit: int | None = None
    requests_remaining: int | None = None
    requests_reset: float | None = None
    tokens_limit: int | None = None
    tokens_remaining: int | None = None
    tokens_reset: float | None = None
    unified_status: str | None = None
    unified_5h_utilization: float | None = None
    unified_7d_utilization: float | None = None
    unified_reset: float | None = None
    # Each subscription window on its own (DESIGN "Subscription windows and policy"):
    # anthropic-ratelimit-unified-{5h,7d}-{status,reset,utilization} and the rest.
    unified_5h_status: str | None = None
    unified_5h_reset: float | None = None
    unified_7d_status: str | None = None
    unified_7d_reset: float | None = None
    unified_representative_claim: str | None = None
    unified_fallback: str | None = None
    unified_overage_status: str | None = None
    # x-codex-{primary,secondary}-used-percent (0-100) and -reset-at (Unix seconds).
    codex_primary_used_percent: float | None = None
    codex_primary_reset: float | None = None
    codex_secondary_used_percent: float | None = None
    codex_secondary_reset: float | None = None



class Budget(msgspec.Struct, omit_defaults=True):
    """A profile's predicted request/token budget (rate budgets)."""

    requests: float | None = None
    requests_limit: int | None = None
    tokens: float | None = None
    tokens_limit: int | None = None
    refill_at: float | None = None
    unified_status: str | None = None


class WindowStatus(msgspec.Struct, omit_defaults=True):
    """One subscription window of a profile (`5h`, `7d`, `primary`, `secondary`)."""

    utilization: float | None = None
    """Fraction used, 0.0-1.0 (a provider may report a little over 1)."""
    reset: float | None = None
    status: str | None = None


class ProfileStatus(msgspec.Struct):
    id: str
    provider: str
    type: ProfileType
    label: str
    state: ProfileState
    cooldown_until: float | None
    error_count: int
    active_leases: int
    fingerprint: str
    source: Source
    last_used: float | None = None
    last_error: str | None = None
    priority: int = 0
    max_concurrent: int | None = None
    model_cooldowns: dict[str, float] = {}
    budget: Budget | None = None
    removed: bool = False
    reason: str = "ready"
    """Why a lease (for no model in particular) would not get it now: `ready`,
    `cooldown`, `busy`, `budget`, `disabled`, ... (docs/policy.md)."""
    until: float | None = None
    """When `reason` ends by itself, if time alone ends it."""
    expires_at: float | None = None
    """When the secret ends (an OAuth access token, a token with `expires`)."""
    refreshed_at: float | None = None
    """OAuth: when argentd last got a new access token for this login."""
    refresh_error: str | None = None
    """OAuth: why the last refresh failed (None once one works)."""
    windows: dict[str, WindowStatus] = {}
    """Subscription windows as last reported (those not yet reset)."""


class LeaseStatus(msgspec.Struct):
    lease_id: str
    profile: str
    client: str | None
    expires_at: float
    detached: bool = False
    model: str | None = None


class ConfigStatus(msgspec.Struct):
    profiles_path: str
    loaded_at: float | None
    error: str | None = None
    config_path: str | None = None
    state_path: str | None = None
    """The state file this daemon keeps (one per socket)."""


class GatewayStatus(msgspec.Struct):
    """`status.gateway`: where the HTTP gateway listens (`url` None when off) and why not."""

    url: str | None = None
    error: str | None = None


class ClusterStatus(msgspec.Struct):
    """`status.cluster`: the daemon's link to the other hosts (never a password)."""

    name: str
    host: str
    connected: bool
    hosts: list[str]
    """Hosts with a recent heartbeat, this one included (empty while disconnected)."""
    error: str | None = None
    url: str | None = None
    latency: float | None = None
    """Seconds of the last heartbeat's round trip."""
    skew: float | None = None
    """Redis' TIME minus this host's clock, in seconds."""


class StatusResult(msgspec.Struct, omit_defaults=True):
    profiles: list[ProfileStatus]
    leases: list[LeaseStatus]
    config: ConfigStatus
    routes: dict[str, list[str]]
    gateway: GatewayStatus | None = None
    cluster: ClusterStatus | None = None
    """Left out without `[cluster]`."""
    window_cap: float | None = None
    """`[policy] window_cap` when it is not the default 1.0 (left out on the wire then)."""
    client_window_caps: dict[str, float] = {}
    """`[policy.clients.NAME] window_cap` of the clients that set one."""


"""Read-only views of the engine: the `status` result and Prometheus metrics.

Both are built from the engine's state at `now` and never contain a secret:
profiles show their fingerprint only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from argent_client.protocol import (
    FAILURE_KINDS,
    ConfigStatus,
    LeaseStatus,
    ProfileStatus,
    StatusResult,
)

from .engine import Engine
from .readiness import profile_state


def status(engine: Engine, config_status: ConfigStatus, *, now: float) -> StatusResult:
    """DESIGN's `status` result at `now`."""
    profiles = []
    for slot in engine.active_profiles():
        p = slot.profile
        ks = engine.key_state(p.id)
        ready = engine.readiness_of(p.id, now)
        profiles.append(
            ProfileStatus(
                id=p.id,
                provider=p.provider,
                type=p.type,
                label=p.label,
                state=profile_state(ready, oauth=p.type == "oauth"),
                cooldown_until=ks.cooling(now),
                error_count=ks.error_count,
                active_leases=slot.active,
                fingerprint=p.secret.fingerprint,
                source=p.source,
                last_used=ks.last_used,
                last_error=ks.last_error,
                priority=p.priority,
                max_concurrent=p.max_concurrent,
                model_cooldowns={m: t for m, t in ks.model_cooldowns.items() if t > now},
                budget=ks.known_budget.view(now),
                removed=slot.removed,
                reason=ready.reason,
                until=ready.until,
                expires_at=p.expires,
                refreshed_at=p.oauth.refreshed_at if p.oauth else None,
                refresh_error=p.oauth.error if p.oauth else None,
                windows={} if ks.budget is None else ks.budget.window_view(now),
            )
        )
    profiles.sort(key=lambda s: (s.provider, s.id))
    leases = [
        LeaseStatus(
            lease_id=le.id,
            profile=le.profile_id,
            client=le.client,
            expires_at=le.expires_at,
            detached=le.detached,
            model=le.model,
        )
        for le in engine.leases()
    ]
    policy = engine.config.policy
    return StatusResult(
        profiles=profiles,
        leases=leases,
        config=config_status,
        routes={k: list(v) for k, v in engine.config.routes.items()},
        window_cap=None if policy.window_cap == 1.0 else policy.window_cap,
        client_window_caps={name: c.window_cap for name, c in policy.clients.items()
                            if c.window_cap is not None},
    )


def _label(**labels: str) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics(
    engine: Engine,
    *,
    now: float,
    latency_buckets: Iterable[tuple[float, int]] = (),
    latency_sum: float = 0.0,
    latency_count: int = 0,
) -> str:
    """Prometheus text exposition of the engine's counters at `now`.

    `latency_buckets` are cumulative (upper bound in seconds, count) pairs of
    the server's request latency histogram.
    """
    out: list[str] = []

    def family(name: str, kind: str, help_: str) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")

    c = engine.counters
    family("argentd_leases_granted_total", "counter", "Leases granted, by provider.")
    providers = sorted({p.provider for p in engine.profiles()})
    for prov in providers:
        n = c.get(f"leases_granted:{prov}", 0)
        out.append(f"argentd_leases_granted_total{_label(provider=prov)} {n}")
    family("argentd_leases_active", "gauge", "Leases currently held.")
    out.append(f"argentd_leases_active {len(engine.leases())}")
    family("argentd_failures_total", "counter", "Failure reports, by kind.")
    for kind in FAILURE_KINDS:
        out.append(f"argentd_failures_total{_label(kind=kind)} {c.get(f'failures:{kind}', 0)}")
    family("argentd_cooldowns_started_total", "counter", "Cooldowns started.")
    out.append(f"argentd_cooldowns_started_total {c.get('cooldowns_started', 0)}")
    family("argentd_profiles", "gauge", "Profiles by state.")
    states = Counter(engine.state_of(p.id, now) for p in engine.profiles())
    for state in ("ready", "cooldown", "disabled", "invalid", "expired"):
        out.append(f"argentd_profiles{_label(state=state)} {states.get(state, 0)}")
    family("argentd_profile_cooldown_seconds", "gauge", "Seconds left of a profile's cooldown.")
    for p in engine.profiles():
        until = engine.key_state(p.id).cooling(now)
        left = 0.0 if until is None else until - now
        out.append(f"argentd_profile_cooldown_seconds{_label(profile=p.id)} {left:.3f}")
    family("argentd_profile_budget_requests", "gauge",
           "Predicted requests left in a profile's rate budget (reported profiles).")
    refills = []
    for p in engine.profiles():
        budget = engine.key_state(p.id).known_budget
        bucket = budget.requests
        if bucket is not None:
            out.append(f"argentd_profile_budget_requests{_label(profile=p.id)} "
                       f"{bucket.at(now):.3f}")
            refills.append((p.id, max(0.0, budget.ready_at(now) - now)))
    family("argentd_profile_budget_refill_seconds", "gauge",
           "Seconds until a profile's rate budget fits the next request (0: it does).")
    for pid, left in refills:
        out.append(f"argentd_profile_budget_refill_seconds{_label(profile=pid)} {left:.3f}")
    family("argentd_profile_window_utilization", "gauge",
           "Used fraction of a subscription window (5h, 7d, primary, secondary), as reported.")
    for p in engine.profiles():
        kept = engine.key_state(p.id).budget
        for name, w in ({} if kept is None else kept.window_view(now)).items():
            if w.utilization is not None:
                out.append(f"argentd_profile_window_utilization"
                           f"{_label(profile=p.id, window=name)} {w.utilization:.4f}")
    family("argentd_oauth_refreshes_total", "counter", "OAuth refreshes, by result.")
    for result in ("ok", "error", "invalid", "adopted"):
        n = c.get(f"oauth_refreshes:{result}", 0)
        out.append(f"argentd_oauth_refreshes_total{_label(result=result)} {n}")
    family("argentd_profile_expires_seconds", "gauge",
           "Seconds left of a profile's secret (those with an expiry: OAuth access tokens).")
    for p in engine.profiles():
        if p.expires is not None:
            out.append(f"argentd_profile_expires_seconds{_label(profile=p.id)} "
                       f"{p.expires - now:.3f}")
    family("argentd_request_duration_seconds", "histogram", "Time to answer a request.")
    for bound, count in latency_buckets:
        out.append(f'argentd_request_duration_seconds_bucket{{le="{bound:g}"}} {count}')
    out.append(f'argentd_request_duration_seconds_bucket{{le="+Inf"}} {latency_count}')
    out.append(f"argentd_request_duration_seconds_sum {latency_sum:.6f}")
    out.append(f"argentd_request_duration_seconds_count {latency_count}")
    return "\n".join(out) + "\n"

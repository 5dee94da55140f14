"""argentctl's human output: rich tables, durations, one-line events.

Every function takes `now` (Unix seconds) instead of reading the clock, so
the output is deterministic in tests. Nothing here ever sees a secret except
`lease_line`, which deliberately prints only the lease's id and profile.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .profiles_file import FileProfile
from .protocol import Event, LeaseResult, ProfileStatus, StatusResult

_STATE_STYLE = {"ready": "green", "cooldown": "yellow", "disabled": "dim", "invalid": "bold red",
                "expired": "red"}


def duration(seconds: float) -> str:
    """`45s`, `4m12s`, `2h05m`, `3d04h`: two units at most, rounded down."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def ago(ts: float | None, now: float) -> str:
    """`3m ago`, `just now`, or `never` for None."""
    if ts is None:
        return "never"
    delta = now - ts
    if delta < 1:
        return "just now"
    return f"{duration(delta)} ago"


def clock(ts: float) -> str:
    """Local wall-clock time `HH:MM:SS`."""
    return time.strftime("%H:%M:%S", time.localtime(ts))


def state_text(p: ProfileStatus, now: float) -> Text:
    """The state cell: `cooldown 4m12s`, plus models cooling down on their own."""
    label: str = "removed" if p.removed else p.state
    if p.state == "cooldown" and p.cooldown_until is not None:
        label = f"cooldown {duration(p.cooldown_until - now)}"
    text = Text(label, style=_STATE_STYLE.get(p.state, ""))
    models = [(m, until) for m, until in sorted(p.model_cooldowns.items()) if until > now]
    if models:
        inner = ", ".join(f"{m} {duration(until - now)}" for m, until in models)
        text.append(f" ({inner})", style="yellow")
    return text


def _type_text(p: ProfileStatus) -> str:
    return f"{p.type} (env)" if p.source == "env" else p.type


def status_tables(status: StatusResult, now: float, console: Console) -> None:
    """Print the profiles table, the leases table, the config line and routes."""
    table = Table(title="Profiles", title_justify="left", box=box.SIMPLE)
    table.add_column("Profile", no_wrap=True)
    table.add_column("Label")
    table.add_column("Type", no_wrap=True)
    table.add_column("State", no_wrap=True)
    table.add_column("Leases", justify="right")
    table.add_column("Errors", justify="right")
    table.add_column("Last use", no_wrap=True)
    for p in status.profiles:
        leases = str(p.active_leases)
        if p.max_concurrent is not None:
            leases += f"/{p.max_concurrent}"
        errors = str(p.error_count)
        if p.last_error:
            errors += f" ({p.last_error})"
        table.add_row(
            p.id, p.label, _type_text(p), state_text(p, now), leases, errors, ago(p.last_used, now)
        )
    if not status.profiles:
        table.caption = "no profiles: add one with `argentctl setup`"
    console.print(table)

    if status.leases:
        ltable = Table(title="Leases", title_justify="left", box=box.SIMPLE)
        for name in ("Lease", "Profile", "Model", "Client", "Expires in", "Detached"):
            ltable.add_column(name, no_wrap=name in ("Lease", "Expires in"))
        for lease in status.leases:
            ltable.add_row(
                lease.lease_id,
                lease.profile,
                lease.model or "",
                lease.client or "",
                duration(lease.expires_at - now),
                "yes" if lease.detached else "no",
            )
        console.print(ltable)
    else:
        console.print("No active leases.")

    cfg = status.config
    loaded = "not loaded" if cfg.loaded_at is None else f"loaded {ago(cfg.loaded_at, now)}"
    console.print(Text(f"Profiles file: {cfg.profiles_path} ({loaded})"), soft_wrap=True)
    if cfg.error:
        console.print(Text(f"Config error: {cfg.error}", style="bold red"), soft_wrap=True)
    for name, targets in status.routes.items():
        console.print(Text(f"Route {name}: {' → '.join(targets)}"), soft_wrap=True)


def daemon_profiles_table(profiles: Sequence[ProfileStatus], now: float) -> Table:
    """`profiles list` as the daemon sees it: fingerprints, never secrets."""
    table = Table(box=box.SIMPLE)
    for name in ("Profile", "Type", "Label", "State", "Priority", "Fingerprint"):
        table.add_column(name, no_wrap=name in ("Profile", "Type", "Fingerprint"))
    for p in profiles:
        table.add_row(
            p.id, _type_text(p), p.label, state_text(p, now), str(p.priority), p.fingerprint
        )
    return table


def file_profiles_table(profiles: Sequence[FileProfile]) -> Table:
    """`profiles list` read from the file when the daemon is not reachable."""
    table = Table(box=box.SIMPLE)
    for name in ("Profile", "Type", "Label", "Priority", "Fingerprint"):
        table.add_column(name, no_wrap=name in ("Profile", "Type", "Fingerprint"))
    for p in profiles:
        label = f"{p.label} (disabled)" if p.disabled else p.label
        prio = "" if p.priority is None else str(p.priority)
        table.add_row(p.id, p.type, label, prio, p.fingerprint)
    return table


def event_line(event: Event) -> str:
    """One line per event: `12:00:01 cooldown_start anthropic:a until=12:05:01 kind=rate_limit`."""
    parts = [clock(event.at), event.type]
    if event.profile:
        parts.append(event.profile)
    for key in ("lease_id", "provider", "model", "kind", "client", "profiles"):
        value = getattr(event, key)
        if value is not None:
            parts.append(f"{key}={value}")
    if event.until is not None:
        parts.append(f"until={clock(event.until)} ({duration(event.until - event.at)})")
    if event.message:
        parts.append(f"message={event.message!r}")
    return " ".join(parts)


def lease_line(lease: LeaseResult, now: float) -> str:
    """A human summary of a lease: id, profile, expiry; never the token."""
    label = f" ({lease.label})" if lease.label else ""
    model = f" model {lease.model}" if lease.model else ""
    return (
        f"leased {lease.profile}{label}{model}, lease {lease.lease_id}, "
        f"expires in {duration(lease.expires_at - now)} at {clock(lease.expires_at)}"
    )

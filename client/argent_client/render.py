"""argentctl's human output: padded tables, window bars, durations, one-line events.

Every function takes `now` (Unix seconds) instead of reading the clock, so
the output is deterministic in tests. Nothing here ever sees a secret except
`lease_line`, which deliberately prints only the lease's id and profile.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence

from rich.cells import cell_len
from rich.console import Console
from rich.text import Text

from .facts import did_you_mean, shown_id
from .profiles_file import FileProfile
from .protocol import ClusterStatus, Event, LeaseResult, ProfileStatus, StatusResult, WindowStatus

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
    elif p.reason == "window":
        left = "" if p.until is None else f" {duration(p.until - now)}"
        label = f"cooldown{left} (window cap)"
    text = Text(label, style=_STATE_STYLE.get(p.state, ""))
    models = [(m, until) for m, until in sorted(p.model_cooldowns.items()) if until > now]
    if models:
        inner = ", ".join(f"{m} {duration(until - now)}" for m, until in models)
        text.append(f" ({inner})", style="yellow")
    return text


def _type_text(p: ProfileStatus) -> str:
    return f"{p.type} (env)" if p.source == "env" else p.type


Cell = str | Text
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")


class Grid:
    """A plain table: padded columns, one header, one line per row.

    rich's `Table` measures and wraps every cell (10,000 profiles took 5 s to
    print); this pads each column to its widest cell and prints one `Text`,
    so a row costs a few string operations. Cells never wrap.
    """

    def __init__(
        self, title: str | None, headers: Sequence[str], right: Sequence[str] = ()
    ) -> None:
        self.title = title
        self.headers = list(headers)
        self.right = {self.headers.index(h) for h in right}
        self.rows: list[list[Cell]] = []

    def add_row(self, *cells: Cell) -> None:
        # A control character in a label (a newline, an escape) would break the
        # layout or the terminal: each shows as a space.
        self.rows.append(
            [_CONTROLS.sub(" ", c) if isinstance(c, str) else c for c in cells]
        )

    def text(self) -> Text:
        """The whole table as one `Text` (styles kept, no trailing newline)."""
        widths = [cell_len(h) for h in self.headers]
        plain_rows = [[c.plain if isinstance(c, Text) else c for c in row] for row in self.rows]
        for row in plain_rows:
            for i, cell in enumerate(row):
                n = cell_len(cell)
                if n > widths[i]:
                    widths[i] = n
        out = Text()
        if self.title:
            out.append(self.title + "\n", style="italic")
        self._line(out, self.headers, self.headers, widths, "bold")
        out.append(" " + "  ".join("─" * w for w in widths) + "\n", style="dim")
        for cells, plain in zip(self.rows, plain_rows, strict=True):
            self._line(out, cells, plain, widths, "")
        out.rstrip()
        return out

    def _line(
        self, out: Text, cells: Sequence[Cell], plain: Sequence[str], widths: list[int], style: str
    ) -> None:
        # Unstyled runs are joined into one append: a Text append costs far more
        # than a string concatenation.
        run = " "
        last = len(cells) - 1
        for i, (cell, text) in enumerate(zip(cells, plain, strict=True)):
            pad = " " * (widths[i] - cell_len(text))
            if i in self.right:
                run += pad
            if isinstance(cell, Text) or style:
                out.append(run)
                run = ""
                if isinstance(cell, Text):
                    out.append_text(cell)
                else:
                    out.append(cell, style=style)
            else:
                run += cell
            if i not in self.right and i != last:
                run += pad
            if i != last:
                run += "  "
        out.append(run.rstrip(" ") + "\n")  # an empty last cell leaves no trailing pad

    def print(self, console: Console) -> None:
        """Print the table to `console`, never wrapped or cropped."""
        console.print(self.text(), soft_wrap=True, crop=False)


def _provider_summary(provider: str, profiles: Sequence[ProfileStatus], now: float) -> str:
    """`anthropic: 12 profiles: 9 ready, 3 cooldown (next ready in 4m12s)`."""
    counts: dict[str, int] = {}
    soonest: float | None = None
    for p in profiles:
        state = "removed" if p.removed else p.state
        counts[state] = counts.get(state, 0) + 1
        if p.state == "cooldown" and p.cooldown_until is not None:
            soonest = p.cooldown_until if soonest is None else min(soonest, p.cooldown_until)
    parts = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    text = f"{provider}: {len(profiles)} profile(s): {parts}"
    if soonest is not None and not counts.get("ready"):
        text += f" (next ready in {duration(soonest - now)})"
    return text


SHOWN_ROWS = 50
"""Above this many profiles, `status` prints one summary line per provider instead."""


def status_tables(
    status: StatusResult,
    now: float,
    console: Console,
    *,
    provider: str | None = None,
    show_all: bool = False,
) -> None:
    """Print the config error (first), the profiles, a summary per provider, leases, routes.

    `provider` keeps only that provider's profiles and leases. More than
    `SHOWN_ROWS` profiles are summed up per provider unless `show_all`.
    """
    cfg = status.config
    if cfg.error:
        lines = cfg.error.splitlines()
        if len(lines) == 1:
            console.print(Text(f"Config error: {lines[0]}", style="bold red"), soft_wrap=True)
        else:
            console.print(Text(f"Config errors ({len(lines)}):", style="bold red"))
            for line in lines:
                console.print(Text(f"  {line}", style="red"), soft_wrap=True)
        console.print(
            Text("fix: `argentctl doctor` gives the fix for each problem; argentd reloads"
                 " the file on its own when it changes"),
            soft_wrap=True,
        )
    profiles = status.profiles
    if provider is not None:
        profiles = [p for p in profiles if p.provider == provider]
    by_provider: dict[str, list[ProfileStatus]] = {}
    for p in profiles:
        by_provider.setdefault(p.provider, []).append(p)
    if len(profiles) > SHOWN_ROWS and not show_all:
        console.print(Text("Profiles", style="italic"))
        for name, group in by_provider.items():
            console.print(Text(f"  {_provider_summary(name, group, now)}"), soft_wrap=True)
        console.print(
            Text(f"{len(profiles)} profiles: one line per provider; list them with"
                 " --provider NAME or --all", style="dim"),
            soft_wrap=True,
        )
    else:
        table = Grid("Profiles", ("Profile", "Label", "Type", "State", "Leases", "Errors",
                                  "Last use"), right=("Leases", "Errors"))
        for index, p in enumerate(profiles):
            in_use = str(p.active_leases)
            if p.max_concurrent is not None:
                in_use += f"/{p.max_concurrent}"
            errors = str(p.error_count)
            if p.last_error:
                errors += f" ({p.last_error})"
            table.add_row(
                shown_id(p.id, index), p.label, _type_text(p), state_text(p, now), in_use,
                errors, ago(p.last_used, now),
            )
        if profiles:
            table.print(console)
            for index, p in enumerate(profiles):
                if p.refresh_error:
                    console.print(Text(f"{shown_id(p.id, index)}: refresh failed:"
                                       f" {p.refresh_error}", style="yellow"), soft_wrap=True)
            cap = 1.0 if status.window_cap is None else status.window_cap
            windows = windows_table(profiles, now, cap, status.client_window_caps)
            if windows is not None:
                windows.print(console)
            if len(by_provider) > 1:
                for name, group in by_provider.items():
                    console.print(Text(_provider_summary(name, group, now)), soft_wrap=True)
        elif provider is not None:
            console.print(Text(f"no {provider} profiles{did_you_mean(provider)} (argentctl status"
                               " lists every provider)"), soft_wrap=True)
        elif cfg.error:
            console.print("no profiles loaded: fix the error above")
        else:
            console.print("no profiles: add one with `argentctl setup`")

    leases = status.leases
    if provider is not None:
        ids = {p.id for p in profiles}
        leases = [lease for lease in leases if lease.profile in ids]
    if leases:
        ltable = Grid("Leases", ("Lease", "Profile", "Model", "Client", "Expires in", "Detached"))
        for lease in leases:
            ltable.add_row(
                lease.lease_id,
                lease.profile,
                lease.model or "",
                lease.client or "",
                duration(lease.expires_at - now),
                "yes" if lease.detached else "no",
            )
        ltable.print(console)
    else:
        console.print("No active leases.")

    loaded = "not loaded" if cfg.loaded_at is None else f"loaded {ago(cfg.loaded_at, now)}"
    console.print(Text(f"Profiles file: {cfg.profiles_path} ({loaded})"), soft_wrap=True)
    for name, targets in status.routes.items():
        console.print(Text(f"Route {name}: {' → '.join(targets)}"), soft_wrap=True)
    from .gateway_cmd import status_line

    gateway = status_line(status)
    if gateway:
        console.print(Text(gateway), soft_wrap=True)
    if status.cluster is not None:
        console.print(cluster_line(status.cluster), soft_wrap=True)


def cluster_line(c: ClusterStatus) -> Text:
    """`Cluster argentd as laptop: 3 hosts (build-1, ci-2, laptop)` or why it is alone."""
    if c.connected:
        others = ", ".join(c.hosts) or c.host
        return Text(f"Cluster {c.name} as {c.host}: {len(c.hosts)} host(s) ({others})")
    return Text(f"Cluster {c.name} as {c.host}: not connected, serving alone"
                f" ({c.error or 'no reason given'})", style="yellow")


BAR_CELLS = 10
"""Cells of a window's bar: one per 10 %."""
_SUBSCRIPTION_TYPES = frozenset({"setup-token", "oauth"})
"""Profile types a `window_cap` holds back (argentd's readiness)."""


def window_bar(utilization: float | None) -> str:
    """`[██████░░░░]  62%`: one cell per 10 % (rounded), the percentage right-aligned."""
    full, empty = "█", "░"
    if utilization is None or not math.isfinite(utilization):
        return f"[{empty * BAR_CELLS}]    ?"
    filled = min(BAR_CELLS, max(0, round(utilization * BAR_CELLS)))
    return f"[{full * filled}{empty * (BAR_CELLS - filled)}] {utilization * 100:3.0f}%"


def window_note(
    w: WindowStatus, now: float, cap: float = 1.0, client_caps: dict[str, float] | None = None,
    *, capped: bool = True,
) -> tuple[str, str]:
    """What holds a window back, and its style: `rejected` (the provider says it is
    spent, or a Codex window at 100 %), `at cap` (the `[policy] window_cap`:
    no lease gets the profile until it resets), `at cap for background` (a
    client's own cap), `warning` (the provider's `allowed_warning`), or nothing.
    A cap holds only a subscription (`capped`) and only while its reset is ahead."""
    u = w.utilization if w.utilization is not None and math.isfinite(w.utilization) else None
    if w.status == "rejected" or (w.status is None and u is not None and u >= 1.0):
        return "rejected", "bold red"
    if capped and u is not None and w.reset is not None and w.reset > now:
        if u >= cap:
            return ("at cap" if cap == 1.0 else f"at cap {cap * 100:.0f}%"), "yellow"
        reached = [f"{name} {c * 100:.0f}%" for name, c in sorted((client_caps or {}).items())
                   if u >= c]
        if reached:
            return f"at cap for {', '.join(reached)}", "yellow"
    if w.status == "allowed_warning":
        return "warning", "yellow"
    return "", ""


def window_line(
    name: str, w: WindowStatus, now: float, cap: float = 1.0,
    client_caps: dict[str, float] | None = None, *, capped: bool = True,
) -> str:
    """One window as a line: `5h [██████░░░░]  62% resets in 1h12m at cap`."""
    line = f"{name} {window_bar(w.utilization)}"
    if w.reset is not None and math.isfinite(w.reset):
        line += f" resets in {duration(w.reset - now)}"
    note, _ = window_note(w, now, cap, client_caps, capped=capped)
    return f"{line} {note}" if note else line


def windows_table(
    profiles: Sequence[ProfileStatus], now: float, cap: float = 1.0,
    client_caps: dict[str, float] | None = None,
) -> Grid | None:
    """The subscription windows of `profiles` (one row each, bars), or None when none
    reported any. The profile is named on its first window's row only."""
    table: Grid | None = None
    for index, p in enumerate(profiles):
        if not p.windows:
            continue
        if table is None:
            table = Grid("Subscription windows", ("Profile", "Window", "Used", "Resets in",
                                                  "Note"))
        shown = shown_id(p.id, index)
        capped = p.type in _SUBSCRIPTION_TYPES
        for name, w in p.windows.items():
            note, style = window_note(w, now, cap, client_caps, capped=capped)
            bar = window_bar(w.utilization)
            table.add_row(
                shown, name, Text(bar, style=style) if style else bar,
                duration(w.reset - now) if w.reset is not None and math.isfinite(w.reset)
                else "?",
                Text(note, style=style) if note else "",
            )
            shown = ""
    return table


def daemon_profiles_table(profiles: Sequence[ProfileStatus], now: float) -> Grid:
    """`profiles list` as the daemon sees it: fingerprints, never secrets."""
    table = Grid(None, ("Profile", "Type", "Label", "State", "Priority", "Fingerprint"))
    for index, p in enumerate(profiles):
        table.add_row(
            shown_id(p.id, index), _type_text(p), p.label, state_text(p, now), str(p.priority),
            p.fingerprint,
        )
    return table


def file_profiles_table(profiles: Sequence[FileProfile]) -> Grid:
    """`profiles list` read from the file when the daemon is not reachable."""
    table = Grid(None, ("Profile", "Type", "Label", "Priority", "Fingerprint"))
    for p in profiles:
        label = f"{p.label} (disabled)" if p.disabled else p.label
        prio = "" if p.priority is None else str(p.priority)
        table.add_row(p.id, p.type, label, prio, p.fingerprint)
    return table


_EVENT_NOTES = {
    "paid_fallback": "an API key was leased, paid per token",
    "probe": "an early-reset probe lease: if it succeeds, the cooldown ends for every agent",
}
"""What a policy event means, said after its fields (docs/policy.md)."""


def event_line(event: Event) -> str:
    """One line per event: `12:00:01 cooldown_start anthropic:a until=12:05:01 kind=rate_limit`.

    `paid_fallback` and `probe` events end with what they mean (`: an API key
    was leased, paid per token (no subscription of the provider is ready)`). A control
    character in a field (a client name) shows as a space.
    """
    parts = [clock(event.at), event.type]
    if event.profile:
        parts.append(event.profile)
    for key in ("lease_id", "provider", "model", "kind", "client", "profiles"):
        value = getattr(event, key)
        if value is not None:
            parts.append(f"{key}={value}")
    if event.until is not None:
        parts.append(f"until={clock(event.until)} ({duration(event.until - event.at)})")
    note = _EVENT_NOTES.get(event.type)
    if note is not None:
        parts[-1] += ":"
        parts.append(note)
        if event.message:
            parts.append(f"({event.message})")
    elif event.message:
        parts.append(f"message={event.message!r}")
    return _CONTROLS.sub(" ", " ".join(parts))


def lease_line(lease: LeaseResult, now: float) -> str:
    """A human summary of a lease: id, profile, expiry; never the token."""
    label = f" ({lease.label})" if lease.label else ""
    model = f" model {lease.model}" if lease.model else ""
    return (
        f"leased {lease.profile}{label}{model}, lease {lease.lease_id}, "
        f"expires in {duration(lease.expires_at - now)} at {clock(lease.expires_at)}"
    )

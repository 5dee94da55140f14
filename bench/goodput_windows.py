"""Goodput's client mix (issue 14): background agents capped, the person served.

Run through `bench/goodput.py` (shape `windows`), or alone:

    python bench/goodput_windows.py                    # 2 modes x 50 s
    python bench/goodput_windows.py --seconds 30 --modes argentd

The fake Anthropic serves the `windows` shape (`fake_provider.SHAPES`): a
subscription key with a "5-hour" window (150 requests per 10 s) and a
"weekly" one (700 per 600 s: it does not reset during a run), both
reported in the `-unified-*` headers of every answer, beside one API key.
Agents lease with a `client` name: `background` ones as fast as their pace
allows (5 requests/s each), `interactive` ones at a person's pace (2/s
each). The daemon holds both keys as profiles; its argentd.toml says

    [policy.clients.background]
    window_cap = 0.6

so background leases stop taking the subscription once a window is at 60 %
and move to the API key (`paid_fallback` is `allow`) until it resets, while
interactive leases (cap 1.0) keep the subscription. Background runs the
5-hour window to its cap in every 10 s window, then (about 30 s in) the
weekly one for good.

Modes: `argentd` (with that policy), `argentd-nocap` (the same daemon and
agents, no argentd.toml: what the person gets without a cap), and
`argentd@REV` (the policy against a git revision's daemon). A daemon that
rejects `[policy]` as an unknown key is detected (`argentd --check`) and
its run is left out with the reason.

Figures per mode, counted by the agents (which profile each lease got,
what the provider answered) and the provider (429s, window use): the
interactive client's share of requests served by the subscription, over
the run and after background was first capped; background's split; the
429s of the whole run. Target: interactive >= 99 % on the subscription
after the cap, no 429.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fake_provider as fp
from _common import REPO, Proc, report, run_agents, table, write_json_atomic

SHAPE: Final = "windows"
PROVIDER: Final = "anthropic"
SUBSCRIPTION: Final = "anthropic:k0"
"""The profile id of the subscription key (`goodput.profiles_for` names them by label)."""
POLICY_TOML: Final = "[policy.clients.background]\nwindow_cap = 0.6\n"
MODES: Final = ("argentd", "argentd-nocap")
SECONDS: Final = 50.0
BACKGROUND: Final = 6
INTERACTIVE: Final = 2
BACKGROUND_INTERVAL: Final = 0.2
INTERACTIVE_INTERVAL: Final = 0.5
TARGET_INTERACTIVE_SHARE: Final = 0.99
BODY: Final = json.dumps({"model": "claude-bench", "max_tokens": 16,
                          "messages": [{"role": "user", "content": "hi"}]}).encode()


@dataclass(frozen=True)
class MixSpec:
    """One agent of the mix."""

    client: str
    """`background` or `interactive`: the lease's `client`."""
    index: int
    url: str
    socket: str
    seconds: float
    interval: float
    """Seconds between the starts of two requests (the agent's pace)."""


@dataclass
class MixOutcome:
    client: str
    requests: list[tuple[float, str, int]] = field(default_factory=list)
    """(seconds since the start, profile id, HTTP status) of each request."""
    no_profile: int = 0
    end_wall: float = 0.0
    error: str | None = None


def _mix_agent(spec: MixSpec, barrier: Any, results: Any) -> None:
    out = MixOutcome(client=spec.client)
    try:
        import httpx

        from argent_client import Client, NoProfileAvailable

        http = httpx.Client(base_url=spec.url, timeout=10.0,
                            headers={"anthropic-version": "2023-06-01",
                                     "content-type": "application/json"})
        client = Client(spec.socket, client_name=spec.client, fallback_env=False, timeout=10.0)
        client.hello()
        barrier.wait()
        barrier.wait()
        start = time.monotonic()
        deadline = start + spec.seconds
        # Spread the agents' first requests over one interval, as independent ones would be.
        next_at = start + spec.interval * (spec.index % 7) / 7
        try:
            while (now := time.monotonic()) < deadline:
                if next_at > now:
                    time.sleep(min(next_at, deadline) - now)
                    continue
                next_at = max(next_at + spec.interval, now)
                try:
                    with client.lease(PROVIDER, wait=max(0.0, deadline - now)) as lease:
                        t = time.monotonic() - start
                        response = http.post("/v1/messages", headers=lease.headers, content=BODY)
                        out.requests.append((t, lease.profile, response.status_code))
                        lease.observe(response)
                        response.raise_for_status()
                except httpx.HTTPStatusError:
                    pass
                except NoProfileAvailable:
                    out.no_profile += 1
        finally:
            out.end_wall = time.time()
            client.close()
            http.close()
    except BaseException as exc:
        out.error = "".join(traceback.format_exception(exc))
        barrier.abort()
    results.put(out)


def policy_supported(src: str | None, root: Path, toml: str = POLICY_TOML) -> str | None:
    """None if the daemon (working tree, or an `export_rev` dir) accepts `toml`.

    Else the daemon's own words, e.g. ``unknown field `policy` ``.
    """
    config = root / "policy-check.toml"
    config.write_text(toml)
    profiles = root / "policy-check-profiles.json"
    write_json_atomic(profiles, {})
    boot = "from argentd.main import main; import sys; sys.exit(main())"
    if src is not None:
        boot = f"import sys; sys.path[:0] = [{src!r}, {os.path.join(src, 'client')!r}]; " + boot
    done = subprocess.run([sys.executable, "-c", boot, "--check", "--config", str(config),
                           "--profiles", str(profiles)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "HOME": str(root)}, timeout=60)
    words = [line for line in (done.stdout + done.stderr).splitlines()
             if "policy" in line and "error" in line.lower()]
    return words[0].strip() if words else None


def start_daemon(keys: list[fp.KeySpec], src: str | None, policy: bool) -> Proc:
    """argentd holding `keys`, with `POLICY_TOML` as its config when `policy`."""
    from goodput import profiles_for

    daemon = Proc("goodput-windows")
    try:
        write_json_atomic(daemon.profiles, profiles_for(keys))
        config = daemon.root / "argentd.toml"
        config.write_text(POLICY_TOML if policy else "")
        boot = "from argentd.main import main; import sys; sys.exit(main())"
        if src is not None:
            boot = (f"import sys; sys.path[:0] = [{src!r}, {os.path.join(src, 'client')!r}]; "
                    + boot)
        daemon._spawn_notified([sys.executable, "-c", boot, "--profiles", str(daemon.profiles),
                                "--socket", str(daemon.socket), "--config", str(config)], 60.0)
    except BaseException:
        daemon.stop()
        raise
    return daemon


def run_mix(provider: Any, seconds: float, *, policy: bool, src: str | None = None,
            background: int = BACKGROUND, interactive: int = INTERACTIVE,
            background_interval: float = BACKGROUND_INTERVAL,
            interactive_interval: float = INTERACTIVE_INTERVAL) -> dict[str, Any]:
    """Reset `provider` (a `goodput.Provider`), run the mix for `seconds`; returns the figures."""
    daemon = start_daemon(provider.keys, src, policy)
    try:
        specs = [MixSpec("background", i, provider.url, str(daemon.socket), seconds,
                         background_interval) for i in range(background)]
        specs += [MixSpec("interactive", i, provider.url, str(daemon.socket), seconds,
                          interactive_interval) for i in range(interactive)]
        run = run_agents(_mix_agent, specs, provider, watch={"daemon": [daemon.pid]},
                         seconds=seconds, label="mix")
    finally:
        daemon.stop()
    window = max(o.end_wall for o in run.outcomes) - run.start_wall
    return summarise(run.outcomes, run.stats, window, run.cpu["daemon"])


def summarise(outcomes: list[MixOutcome], stats: dict[str, Any], window: float,
              daemon_cpu: float | None) -> dict[str, Any]:
    """The figures of one mix run (see the module docstring)."""
    by_client: dict[str, list[tuple[float, str, int]]] = {}
    no_profile: dict[str, int] = {}
    for o in outcomes:
        by_client.setdefault(o.client, []).extend(o.requests)
        no_profile[o.client] = no_profile.get(o.client, 0) + o.no_profile
    bg = by_client.get("background", [])
    # Background was capped when one of its leases first got another profile.
    capped_at = min((t for t, profile, _ in bg if profile != SUBSCRIPTION), default=None)
    clients: dict[str, Any] = {}
    for name, reqs in sorted(by_client.items()):
        after = [r for r in reqs if capped_at is not None and r[0] >= capped_at]
        clients[name] = {
            "requests": len(reqs),
            "subscription": sum(1 for _, p, _ in reqs if p == SUBSCRIPTION),
            "subscription_share": _share(reqs),
            "after_cap_requests": len(after),
            "after_cap_subscription_share": _share(after),
            "ok": sum(1 for *_, s in reqs if s == 200),
            "429": sum(1 for *_, s in reqs if s == 429),
            "no_profile": no_profile.get(name, 0),
        }
    keys = stats["keys"]
    return {
        "seconds": round(window, 3),
        "capped_at_s": None if capped_at is None else round(capped_at, 3),
        "background_last_on_subscription_s": round(last, 3) if (last := max(
            (t for t, profile, _ in bg if profile == SUBSCRIPTION), default=None)) is not None
        else None,
        "clients": clients,
        "provider_429": sum(k["429"] for k in keys.values()),
        "provider_rejected": sum(k["rejected"] for k in keys.values()),
        "provider_requests": sum(k["requests"] for k in keys.values()),
        "windows_at_end": {label: k.get("windows", {}) for label, k in keys.items()
                           if k.get("windows")},
        "unknown_key": stats.get("unknown_key", 0),
        "daemon_cpu_s": None if daemon_cpu is None else round(daemon_cpu, 2),
    }


def _share(reqs: list[tuple[float, str, int]]) -> float | None:
    if not reqs:
        return None
    return round(sum(1 for _, p, _ in reqs if p == SUBSCRIPTION) / len(reqs), 4)


def check_targets(figures: dict[str, Any]) -> dict[str, bool]:
    """Issue 14's targets for one policy run."""
    interactive = figures["clients"].get("interactive", {})
    share = interactive.get("after_cap_subscription_share")
    return {
        "background_capped": figures["capped_at_s"] is not None,
        "interactive_after_cap_ge_99pct": share is not None and share >= TARGET_INTERACTIVE_SHARE,
        "no_429": figures["provider_429"] == 0,
    }


def run_modes(modes: list[str], seconds: float, *, latency: float = fp.DEFAULT_LATENCY,
              sources: dict[str, str] | None = None, **mix: Any) -> dict[str, Any]:
    """Every mode of `modes` against one fake provider; returns `{mode: figures}`.

    A mode whose daemon rejects `[policy]` gets `{"skipped": reason}`; a
    policy mode's figures carry `targets`.
    """
    from goodput import Provider

    sources = sources or {}
    out: dict[str, Any] = {}
    provider = Provider(fp.make_keys(fp.SHAPES[SHAPE]), latency=latency, reset_precision="ms")
    try:
        for mode in modes:
            src = sources.get(mode)
            policy = mode != "argentd-nocap"
            if policy:
                why = policy_supported(src, Path(provider.dir))
                if why is not None:
                    print(f"{SHAPE} {mode}: skipped, the daemon rejects [policy]: {why}",
                          file=sys.stderr, flush=True)
                    out[mode] = {"skipped": f"the daemon rejects [policy]: {why}"}
                    continue
            print(f"{SHAPE} {mode} ({seconds:g} s) ...", file=sys.stderr, flush=True)
            figures = run_mix(provider, seconds, policy=policy, src=src, **mix)
            if policy:
                figures["targets"] = check_targets(figures)
            out[mode] = figures
            inter = figures["clients"].get("interactive", {})
            print(f"  interactive on the subscription after the cap: "
                  f"{_pct(inter.get('after_cap_subscription_share'))}, "
                  f"{figures['provider_429']} answered 429", file=sys.stderr, flush=True)
    finally:
        provider.stop()
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def human(results: dict[str, Any]) -> str:
    """The mix's table: one row per mode and client."""
    rows = []
    for mode, r in results.items():
        if "skipped" in r:
            rows.append([mode, "-", "-", "-", "-", "-", "-", r["skipped"]])
            continue
        for name, c in r["clients"].items():
            rows.append([mode, name, c["requests"], _pct(c["subscription_share"]),
                         _pct(c["after_cap_subscription_share"]), c["429"], c["no_profile"],
                         f"capped at {r['capped_at_s']} s, background last on sub at "
                         f"{r['background_last_on_subscription_s']} s; "
                         f"provider 429 {r['provider_429']}; "
                         f"windows {json.dumps(r['windows_at_end'])}"])
    lines = [table(["mode", "client", "requests", "on sub", "on sub after cap", "429",
                    "no profile", "run"], rows)]
    for mode, r in results.items():
        if "targets" in r:
            lines.append(f"targets {SHAPE} {mode}: " + ", ".join(
                f"{k}={'yes' if v else 'NO'}" for k, v in r["targets"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the mix alone; prints its table on stderr and one JSON object on stdout."""
    parser = argparse.ArgumentParser(description="Goodput's background/interactive client mix.")
    parser.add_argument("--seconds", type=float, default=SECONDS, help=f"per mode ({SECONDS:g})")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="comma list of argentd, argentd-nocap, argentd@REV")
    opts = parser.parse_args(argv)
    from goodput import export_rev

    modes = [m for m in opts.modes.split(",") if m]
    for m in modes:
        if m not in MODES and not (m.startswith("argentd@") and len(m) > len("argentd@")):
            parser.error(f"unknown mode {m!r} (argentd, argentd-nocap, argentd@REV)")
    sources = {m: export_rev(m.partition("@")[2])[0] for m in modes if m.startswith("argentd@")}
    try:
        results = run_modes(modes, opts.seconds, sources=sources)
    finally:
        for src in sources.values():
            shutil.rmtree(src, ignore_errors=True)
    report({"bench": "goodput-windows", "command": " ".join(
        [os.path.basename(sys.executable), *sys.argv]),
        "settings": {"seconds": opts.seconds, "background": BACKGROUND,
                     "interactive": INTERACTIVE, "policy": POLICY_TOML,
                     "shape": [asdict(k) for k in fp.SHAPES[SHAPE]]},
        "results": results}, human(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

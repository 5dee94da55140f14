"""Goodput: how much of the keys' rate limits 8 agents turn into answers.

Run from the repository root with the project's Python (httpx is in the
`test` extra):

    python bench/goodput.py                      # 4 shapes x 2 modes x 30 s + mix: ~6.5 min
    python bench/goodput.py --seconds 10 --shapes steady
    python bench/goodput.py --modes argentd@ba2a109,argentd,baseline   # before/after

A fake Anthropic (`bench/fake_provider.py`, a subprocess on 127.0.0.1)
rate-limits three keys per *shape* (see `fake_provider.SHAPES`): token
buckets taken at each request's arrival, 20 ms per answer, `429
rate_limit_error` with an integer `retry-after` >= 1 s, and the
`anthropic-ratelimit-requests-*` (and for a subscription `-unified-*`)
headers on every answer.

Modes, run one after the other against the same provider process, its
buckets and counts reset before each, by the same 8 agent processes'
code:

- `argentd`: a fresh argentd holding the three keys as profiles. Each
  agent loops `with client.lease("anthropic", wait=...) as lease:` →
  POST /v1/messages with `lease.headers` (httpx, one keep-alive client per
  agent) → `lease.observe(response)` → `raise_for_status()`, so a clean
  exit releases with the response's limits and usage, and a 429 leaves the
  block as `HTTPStatusError`, which the client classifies and reports as
  `rate_limit` with its `retry_after` (and the limits). When no profile is
  ready the lease `wait`s in the daemon (parked, not spinning) until one is
  or the run ends.
- `argentd@REV`: the same, with the daemon (and the `argent_client` it
  imports) taken from git revision REV (`git archive` into a temp dir), so
  one run can compare a commit before a change with the working tree; the
  agents always use the working tree's client.
- `baseline`: no daemon. Each agent holds the same keys itself and rotates
  them round-robin (starting at its own offset), skipping a key it has
  seen 429 until that answer's `retry-after` has passed, and sleeping until
  the first local cooldown ends when all are cooling — a per-process
  failover, as agents do without a broker.

Figures per shape and mode, counted by the provider: successful requests
(200) per second and as a fraction of the keys' summed *capacity*, and the
share of requests answered 429. Capacity is the most 200s the keys could
give over the measured window T (from the provider's reset to the last
agent's stop): for each key `burst + rate * T` (buckets start full), for
the subscription key capped per window by its quota
(`fake_provider.capacity`). Also: the agents' own count of leases that
found no profile, the time they spent parked in `lease`, and the CPU
seconds of the provider, the daemon and the agents (2 cores share them).

Shape `windows` (issue 14) is a different run: a background/interactive
client mix against a subscription with a 5-hour and a weekly window, with
`[policy.clients.background] window_cap = 0.6` (`bench/goodput_windows.py`
says what it measures). It runs for `--mix-seconds` (50) in modes `argentd`
(the policy), `argentd-nocap` (no policy) and each `argentd@REV` asked for;
`baseline` has no client names and is not run for it. Its figures are in
`mix`, its targets in `mix.MODE.targets`.

Prints a table on stderr and one JSON object, last, on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fake_provider as fp
import goodput_windows as gw
from _common import (
    REPO,
    Proc,
    machine,
    percentile,
    report,
    run_agents,
    table,
    write_json_atomic,
)

MODES = ("argentd", "baseline")
"""Default modes; `argentd@REV` runs the daemon of a git revision."""
AGENTS = 8
PROVIDER = "anthropic"
BODY = json.dumps({"model": "claude-bench", "max_tokens": 16,
                   "messages": [{"role": "user", "content": "hi"}]}).encode()
TARGET_STEADY_FRACTION = 0.97
TARGET_STEADY_429 = 0.01


# ---------------------------------------------------------------- agents


@dataclass(frozen=True)
class AgentSpec:
    """What one agent process does."""

    mode: str
    index: int
    url: str
    seconds: float
    socket: str | None = None
    keys: tuple[tuple[str, str], ...] = ()
    """Baseline only: (secret, profile type) per key, in rotation order."""


@dataclass
class AgentOutcome:
    """What one agent counted itself (the provider's counts are the reference)."""

    ok: int = 0
    rate_limited: int = 0
    other_status: dict[int, int] = field(default_factory=dict)
    no_profile: int = 0
    """argentd: leases that ended their `wait` without a profile."""
    lease_s: float = 0.0
    """argentd: seconds spent in `lease` (mostly parked waiting for a profile)."""
    idle_s: float = 0.0
    """baseline: seconds slept because every key was cooling locally."""
    end_wall: float = 0.0
    cpu_s: float = 0.0
    """CPU seconds from the start line to the end (imports and connecting excluded)."""
    http_ms: list[float] = field(default_factory=list)
    """Round-trip of each provider request, in ms."""
    error: str | None = None


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _http_client(url: str) -> Any:
    import httpx

    return httpx.Client(base_url=url, timeout=10.0,
                        headers={"anthropic-version": "2023-06-01",
                                 "content-type": "application/json"})


def _argentd_agent(spec: AgentSpec, barrier: Any, out: AgentOutcome) -> None:
    import httpx

    from argent_client import Client, NoProfileAvailable

    http = _http_client(spec.url)
    client = Client(spec.socket, client_name=f"goodput-agent{spec.index}", fallback_env=False,
                    timeout=10.0)
    client.hello()  # connect before the start line
    barrier.wait()  # ready
    barrier.wait()  # go: the provider was just reset
    out.cpu_s = -_cpu()
    deadline = time.monotonic() + spec.seconds
    try:
        while (now := time.monotonic()) < deadline:
            try:
                with client.lease(PROVIDER, wait=deadline - now) as lease:
                    t = time.monotonic()
                    out.lease_s += t - now
                    response = http.post("/v1/messages", headers=lease.headers, content=BODY)
                    out.http_ms.append((time.monotonic() - t) * 1000)
                    lease.observe(response)
                    response.raise_for_status()
                    lease.record_usage(response.json().get("usage"))
                out.ok += 1
            except httpx.HTTPStatusError as exc:
                status = exc.response.status_code
                if status == 429:
                    out.rate_limited += 1
                else:
                    out.other_status[status] = out.other_status.get(status, 0) + 1
            except NoProfileAvailable:
                out.lease_s += time.monotonic() - now
                out.no_profile += 1
    finally:
        out.end_wall = time.time()
        out.cpu_s += _cpu()
        client.close()
        http.close()


def _baseline_agent(spec: AgentSpec, barrier: Any, out: AgentOutcome) -> None:
    from argent_client.providers import auth_headers

    http = _http_client(spec.url)
    headers = [auth_headers(PROVIDER, type_, secret)  # type: ignore[arg-type]
               for secret, type_ in spec.keys]
    n = len(headers)
    cool = [0.0] * n
    nxt = spec.index % n
    barrier.wait()
    barrier.wait()
    out.cpu_s = -_cpu()
    deadline = time.monotonic() + spec.seconds
    try:
        while (now := time.monotonic()) < deadline:
            pick = next((k % n for k in range(nxt, nxt + n) if cool[k % n] <= now), None)
            if pick is None:
                nap = min(min(cool), deadline) - now
                out.idle_s += nap
                time.sleep(nap)
                continue
            nxt = (pick + 1) % n
            response = http.post("/v1/messages", headers=headers[pick], content=BODY)
            out.http_ms.append((time.monotonic() - now) * 1000)
            if response.status_code == 200:
                response.json()
                out.ok += 1
            elif response.status_code == 429:
                out.rate_limited += 1
                try:
                    wait = float(response.headers.get("retry-after", "1"))
                except ValueError:
                    wait = 1.0
                cool[pick] = time.monotonic() + wait
            else:
                status = response.status_code
                out.other_status[status] = out.other_status.get(status, 0) + 1
    finally:
        out.end_wall = time.time()
        out.cpu_s += _cpu()
        http.close()


def _agent(spec: AgentSpec, barrier: Any, results: Any) -> None:
    out = AgentOutcome()
    try:
        if spec.mode == "argentd":
            _argentd_agent(spec, barrier, out)
        else:
            _baseline_agent(spec, barrier, out)
    except BaseException as exc:
        out.error = "".join(traceback.format_exception(exc))
        barrier.abort()
    results.put(out)


# ---------------------------------------------------------------- provider


class Provider:
    """The fake provider as a subprocess, with its keys in a 0600 config file."""

    def __init__(self, keys: list[fp.KeySpec], *, latency: float,
                 reset_precision: fp.ResetPrecision) -> None:
        self.keys = keys
        self.dir = tempfile.mkdtemp(prefix="argent-goodput-")
        config = os.path.join(self.dir, "provider.json")
        fp.write_config(config, keys, latency=latency, reset_precision=reset_precision)
        self.log = open(os.path.join(self.dir, "provider.log"), "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(fp.__file__)), "--config", config],
            stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("LISTENING "):
            self.stop()
            raise RuntimeError(f"fake provider did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"

    def _call(self, method: str, path: str) -> dict[str, Any]:
        req = urllib.request.Request(self.url + path, method=method, data=b"" if
                                     method == "POST" else None)
        with urllib.request.urlopen(req, timeout=10) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data

    def reset(self) -> None:
        self._call("POST", "/admin/reset")

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/admin/stats")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def profiles_for(keys: list[fp.KeySpec]) -> dict[str, Any]:
    """argentd profiles holding `keys`: a setup token for a subscription, else an API key."""
    return {
        f"{PROVIDER}:{k.label}": {
            "provider": PROVIDER,
            "type": "setup-token" if k.shape.subscription else "api-key",
            "token": k.key,
            "label": f"bench {k.label}",
        }
        for k in keys
    }


# ---------------------------------------------------------------- one run


def export_rev(rev: str) -> tuple[str, str]:
    """`argentd/` and `argent_client/` of git revision `rev` in a temp dir.

    Returns (the dir, the revision's short hash). Raises
    `subprocess.CalledProcessError` for an unknown revision.
    """
    short = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev],
                           check=True, capture_output=True, text=True).stdout.strip()
    root = tempfile.mkdtemp(prefix=f"argent-goodput-{short}-")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "argentd",
                              "client/argent_client"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", root], input=archive, check=True)
    return root, short


def start_daemon(keys: list[fp.KeySpec], src: str | None) -> Proc:
    """argentd holding `keys`, from the working tree or from an `export_rev` dir."""
    daemon = Proc("goodput")
    try:
        if src is None:
            daemon.start_argentd(profiles_for(keys))
            return daemon
        write_json_atomic(daemon.profiles, profiles_for(keys))
        boot = (f"import sys; sys.path[:0] = [{src!r}, {os.path.join(src, 'client')!r}]; "
                "from argentd.main import main; sys.exit(main())")
        daemon._spawn_notified([sys.executable, "-c", boot, "--profiles", str(daemon.profiles),
                                "--socket", str(daemon.socket)], 60.0)
    except BaseException:
        daemon.stop()
        raise
    return daemon


def run_mode(mode: str, provider: Provider, seconds: float, agents: int,
             src: str | None = None) -> dict[str, Any]:
    """Reset the provider, run `agents` agents in `mode` for `seconds`; returns the figures.

    `mode` is `argentd` (the daemon from `src`, an `export_rev` dir, or the
    working tree) or `baseline`.
    """
    daemon: Proc | None = None
    if mode == "argentd":
        daemon = start_daemon(provider.keys, src)
    try:
        keys = tuple((k.key, "setup-token" if k.shape.subscription else "api-key")
                     for k in provider.keys)
        specs = [AgentSpec(mode=mode, index=i, url=provider.url, seconds=seconds,
                           socket=str(daemon.socket) if daemon else None,
                           keys=keys if mode == "baseline" else ())
                 for i in range(agents)]
        watch = {"provider": [provider.proc.pid]}
        if daemon is not None:
            watch["daemon"] = [daemon.pid]
        run = run_agents(_agent, specs, provider, watch=watch, seconds=seconds, label=mode)
    finally:
        if daemon is not None:
            daemon.stop()
    window = max(o.end_wall for o in run.outcomes) - run.start_wall
    return summarise(provider.keys, run.stats, run.outcomes, window,
                     run.cpu.get("daemon"), run.cpu["provider"])


def summarise(keys: list[fp.KeySpec], stats: dict[str, Any], outcomes: list[AgentOutcome],
              window: float, daemon_cpu: float | None, provider_cpu: float) -> dict[str, Any]:
    """The figures of one run from the provider's counts and the agents' outcomes."""
    per_key: dict[str, Any] = {}
    cap_total = ok = requests = limited = 0.0
    for k in keys:
        counts = stats["keys"][k.label]
        cap = fp.capacity(k.shape, window)
        cap_total += cap
        ok += counts["ok"]
        requests += counts["requests"]
        limited += counts["429"]
        per_key[k.label] = {
            "rate": k.shape.rate, "burst": k.shape.burst,
            "subscription": k.shape.subscription,
            "capacity": round(cap, 1), "ok": counts["ok"], "requests": counts["requests"],
            "429": counts["429"], "rejected": counts["rejected"],
            "capacity_fraction": round(counts["ok"] / cap, 4) if cap else None,
        }
    other: dict[str, int] = {}
    for o in outcomes:
        for status, n in o.other_status.items():
            other[str(status)] = other.get(str(status), 0) + n
    return {
        "seconds": round(window, 3),
        "ok": int(ok),
        "requests": int(requests),
        "429": int(limited),
        "ok_per_s": round(ok / window, 2),
        "capacity": round(cap_total, 1),
        "capacity_per_s": round(cap_total / window, 2),
        "capacity_fraction": round(ok / cap_total, 4) if cap_total else None,
        "share_429": round(limited / requests, 4) if requests else None,
        "requests_per_s": round(requests / window, 1),
        "agents_ok": sum(o.ok for o in outcomes),
        "agents_429": sum(o.rate_limited for o in outcomes),
        "other_status": other,
        "unknown_key": stats.get("unknown_key", 0),
        "no_profile": sum(o.no_profile for o in outcomes),
        "http_ms": _latency([x for o in outcomes for x in o.http_ms]),
        "lease_s_per_agent": round(sum(o.lease_s for o in outcomes) / len(outcomes), 3),
        "idle_s_per_agent": round(sum(o.idle_s for o in outcomes) / len(outcomes), 3),
        "cpu_s": {
            "provider": round(provider_cpu, 2),
            "daemon": None if daemon_cpu is None else round(daemon_cpu, 2),
            "agents": round(sum(o.cpu_s for o in outcomes), 2),
        },
        "per_key": per_key,
    }


def _latency(values: list[float]) -> dict[str, float]:
    values.sort()
    return {"p50": round(percentile(values, 50), 2), "p99": round(percentile(values, 99), 2),
            "max": round(values[-1], 2) if values else float("nan")}


# ---------------------------------------------------------------- output


def check_targets(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Issue 7's targets, per daemon mode (`argentd`, `argentd@REV`).

    Steady: >= 97 % of capacity with <= 1 % 429s; every shape: ahead of
    the baseline of the same run on both figures. Returns
    `{mode: {target: bool}}`, or `{target: bool}` when the only daemon
    mode is `argentd`.
    """
    daemons = sorted({m for modes in results.values() for m in modes if m != "baseline"})
    out: dict[str, dict[str, bool]] = {}
    for mode in daemons:
        checks: dict[str, bool] = {}
        steady = results.get("steady", {}).get(mode)
        if steady is not None:
            checks["steady_capacity_ge_97pct"] = (
                steady["capacity_fraction"] >= TARGET_STEADY_FRACTION)
            checks["steady_429_le_1pct"] = steady["share_429"] <= TARGET_STEADY_429
        for shape, modes in results.items():
            a, b = modes.get(mode), modes.get("baseline")
            if a is None or b is None:
                continue
            checks[f"{shape}_ahead_on_capacity"] = (
                a["capacity_fraction"] > b["capacity_fraction"])
            checks[f"{shape}_ahead_on_429"] = a["share_429"] < b["share_429"]
        out[mode] = checks
    if list(out) == ["argentd"]:
        return out["argentd"]
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def human(result: dict[str, Any]) -> str:
    rows = []
    for shape, modes in result["results"].items():
        for mode, r in modes.items():
            cpu = r["cpu_s"]
            rows.append([shape, mode, r["ok_per_s"], r["capacity_per_s"],
                         _pct(r["capacity_fraction"]), _pct(r["share_429"]),
                         r["requests_per_s"], f"{r['http_ms']['p50']}/{r['http_ms']['p99']}",
                         r["no_profile"], r["lease_s_per_agent"],
                         f"{cpu['provider']}/{cpu['daemon'] if cpu['daemon'] is not None else '-'}"
                         f"/{cpu['agents']}"])
    lines = [table(["shape", "mode", "ok/s", "cap/s", "of capacity", "429 share", "req/s",
                    "http ms p50/p99", "no profile", "parked s/agent",
                    "cpu s prov/daemon/agents"], rows)]
    keyrows = []
    for shape, modes in result["results"].items():
        for mode, r in modes.items():
            keyrows.append([shape, mode] + [
                f"{k['ok']}/{k['capacity']:.0f} ({_pct(k['capacity_fraction'])}), "
                f"429 {k['429']}" for k in r["per_key"].values()])
    if keyrows:
        width = max(len(r) for r in keyrows) - 2
        lines += ["", "per key: ok/capacity (fraction), 429s",
                  table(["shape", "mode"] + [f"k{i}" for i in range(width)], keyrows)]
    targets = result.get("targets") or {}
    groups = targets if all(isinstance(v, dict) for v in targets.values()) else {
        "argentd": targets}
    for mode, checks in groups.items():
        if checks:
            lines += ["", f"targets {mode}: " + ", ".join(
                f"{k}={'yes' if v else 'NO'}" for k, v in checks.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print its table and JSON; returns the exit code.

    `--hosts N` runs the cluster benchmark instead (cluster_goodput.py: N
    daemons sharing one redis-server against N per-host daemons), with the
    rest of the arguments passed on.
    """
    args = sys.argv[1:] if argv is None else argv
    if any(a == "--hosts" or a.startswith("--hosts=") for a in args):
        import cluster_goodput

        return cluster_goodput.main(args)
    parser = argparse.ArgumentParser(
        description="Goodput of 8 agents against a rate-limiting fake Anthropic: "
                    "argentd vs per-process rotation. With --hosts N: N hosts in cluster"
                    " mode against N per-host daemons (see cluster_goodput.py --help).")
    parser.add_argument("--seconds", type=float, default=30.0, help="per shape and mode (30)")
    parser.add_argument("--shapes", default=",".join(fp.SHAPES),
                        help="comma list of " + ",".join(fp.SHAPES))
    parser.add_argument("--modes", default=",".join(MODES), help="comma list of " + ",".join(MODES))
    parser.add_argument("--agents", type=int, default=AGENTS, help=f"agent processes ({AGENTS})")
    parser.add_argument("--latency", type=float, default=fp.DEFAULT_LATENCY,
                        help="provider seconds per answer (0.020)")
    parser.add_argument("--reset-precision", choices=["ms", "s"], default="ms",
                        help="requests-reset headers in ms, or whole seconds rounded up (ms)")
    parser.add_argument("--mix-seconds", type=float, default=gw.SECONDS,
                        help=f"per mode of the `windows` client mix ({gw.SECONDS:g})")
    opts = parser.parse_args(argv)
    shapes = [s for s in opts.shapes.split(",") if s]
    modes = [m for m in opts.modes.split(",") if m]
    for s in shapes:
        if s not in fp.SHAPES:
            parser.error(f"unknown shape {s!r}")
    for m in modes:
        if m not in MODES and not (m.startswith("argentd@") and len(m) > len("argentd@")):
            parser.error(f"unknown mode {m!r} (argentd, argentd@REV, baseline)")
    sources: dict[str, str] = {}
    revs: dict[str, str] = {}
    for m in modes:
        if m.startswith("argentd@"):
            try:
                sources[m], revs[m] = export_rev(m.partition("@")[2])
            except subprocess.CalledProcessError as exc:
                parser.error(f"{m}: {exc.stderr.strip() if exc.stderr else exc}")

    result: dict[str, Any] = {
        "bench": "goodput",
        "machine": machine(),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "tree": subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                               capture_output=True, text=True).stdout.strip(),
        "revisions": revs,
        "settings": {"seconds": opts.seconds, "agents": opts.agents, "latency": opts.latency,
                     "reset_precision": opts.reset_precision,
                     "shapes": {s: [asdict(k) for k in fp.SHAPES[s]] for s in shapes}},
        "results": {},
    }
    try:
        for shape in shapes:
            if shape == gw.SHAPE:
                mix_modes = [m for m in modes if m != "baseline"]
                if "argentd" in mix_modes:
                    mix_modes.append("argentd-nocap")
                result["mix"] = gw.run_modes(mix_modes, opts.mix_seconds, latency=opts.latency,
                                             sources=sources)
                continue
            provider = Provider(fp.make_keys(fp.SHAPES[shape]), latency=opts.latency,
                                reset_precision=opts.reset_precision)
            try:
                for mode in modes:
                    print(f"{shape} {mode} ({opts.seconds:g} s) ...", file=sys.stderr,
                          flush=True)
                    figures = run_mode(mode.partition("@")[0], provider, opts.seconds,
                                       opts.agents, sources.get(mode))
                    result["results"].setdefault(shape, {})[mode] = figures
                    print(f"  {_pct(figures['capacity_fraction'])} of capacity, "
                          f"{_pct(figures['share_429'])} answered 429", file=sys.stderr,
                          flush=True)
            finally:
                provider.stop()
    finally:
        for src in sources.values():
            shutil.rmtree(src, ignore_errors=True)
    result["targets"] = check_targets(result["results"])
    text = human(result) if result["results"] else ""
    if "mix" in result:
        text += "\n\nclient mix (shape windows):\n" + gw.human(result["mix"])
    report(result, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

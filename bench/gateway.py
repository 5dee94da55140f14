"""What the gateway adds: the anthropic SDK direct to a fake provider vs through argentd.

    python bench/gateway.py [--requests 1000] [--streams 256] [--litellm]

One run, one fake provider (`tests/fake_upstream.py` in its own process,
every key answering at once), one argentd with two API-key profiles whose
`[upstream.anthropic]` points at the fake. Measured with
`anthropic.AsyncAnthropic` (asyncio, SDK defaults but `max_retries=0`):

- non-streaming `messages.create`, 1 and 32 clients at once: p50 and p99
  of the round trip, direct and through the gateway; *added* is the
  difference of the two percentiles. The paths (direct, the relay below, the
  gateway) take turns in 8 slices of each measurement, so what drifts over
  a run meets all three alike;
- streaming: time to the first event (`message_start`) at 1 client, each
  stream read to its end (so its connections are kept for the next);
- 256 streams held open at once (the fake holds each after its first event
  for `--hold` seconds): the daemon's RSS before and at the peak.

- the floor of a hop: the same round trips and first events through
  `bench/relay.py`, a trio byte relay that reads nothing (what any proxy
  pays for one more process on the path);

- goodput (`--goodput SECONDS`, 0 to skip): `bench/fake_provider.py` with
  three rate-limited keys (shape `steady`: burst 5, 20 req/s each) behind
  a second argentd; 8 threads, each an `anthropic.Anthropic` with SDK
  defaults (2 retries), call as fast as they can through the gateway. The
  figures: the fake's 200s as a share of the keys' capacity over the run,
  and the share of answers the SDKs saw as 429 (after their retries).

LiteLLM's proxy is measured the same way with `--litellm` when
`litellm[proxy]` is installed (best in its own venv, whose `litellm` goes to
`--litellm-bin`: its pins differ from ours); otherwise the run says it was not.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import Proc, latency_summary, machine, report, rss_mb, table

from argent_client.client import Client

WARM_UP = 20
"""Requests each latency run sends first, not measured."""


def start_fake(hold: float) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.fake_upstream", "--slow-delay",
                             str(hold)], stdout=subprocess.PIPE, cwd=Path(__file__).parent.parent)
    assert proc.stdout is not None
    url = proc.stdout.readline().decode().strip()
    if not url.startswith("http://"):
        raise RuntimeError("the fake provider did not start")
    return proc, url


def start_argentd(proc: Proc, fake_url: str) -> tuple[str, str]:
    config = proc.root / "config" / "argentos" / "argentd.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'[gateway]\nlisten = "127.0.0.1:0"\n\n[upstream.anthropic]\n'
                      f'anthropic = "{fake_url}"\n')
    profiles = {f"anthropic:k{i}": {"provider": "anthropic", "type": "api-key",
                                    "token": f"sk-ant-api03-bench{i:04d}{'x' * 60}"}
                for i in range(2)}
    proc.start_argentd(profiles)
    client = Client(proc.socket)
    try:
        gw = client.status().gateway
    finally:
        client.close()
    assert gw is not None and gw.url, gw
    token = (Path(proc.env["XDG_RUNTIME_DIR"]) / "argentos" / "gateway.token").read_text()
    return gw.url, token.strip()


async def many_streams(base_url: str, key: str, count: int, pid: int) -> dict[str, float]:
    import anthropic
    import httpx2  # what anthropic 2.x is built on

    limits = httpx2.Limits(max_connections=count + 8, max_keepalive_connections=count + 8)
    http = anthropic.DefaultAsyncHttpxClient(limits=limits, timeout=120)
    sdk = anthropic.AsyncAnthropic(base_url=base_url, api_key=key, max_retries=0,
                                   http_client=http)
    before = rss_mb(pid)
    opened = 0
    peak = before
    started = asyncio.Event()

    async def one() -> None:
        nonlocal opened
        stream = await sdk.messages.create(model="claude-sonnet-4-5", max_tokens=8, stream=True,
                                           messages=[{"role": "user", "content": "hi"}],
                                           extra_headers={"x-fake-mode": "slow"})
        async for _event in stream:
            opened += 1
            if opened == count:
                started.set()
        await stream.close()

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    await asyncio.wait_for(started.wait(), 120)
    for _ in range(10):
        peak = max(peak, rss_mb(pid))
        await asyncio.sleep(0.05)
    await asyncio.gather(*tasks)
    await sdk.close()
    return {"streams": count, "rss_before_mb": round(before, 1), "rss_peak_mb": round(peak, 1)}


def goodput(seconds: float) -> dict[str, Any]:
    import json
    import threading
    import urllib.request

    import anthropic
    import fake_provider as fp

    keys = fp.make_keys(fp.SHAPES["steady"])
    cfg = Path(tempfile.mkdtemp()) / "fake.json"
    fp.write_config(str(cfg), keys, latency=fp.DEFAULT_LATENCY, reset_precision="ms")
    fake = subprocess.Popen([sys.executable, str(Path(__file__).parent / "fake_provider.py"),
                             "--config", str(cfg)], stdout=subprocess.PIPE)
    assert fake.stdout is not None
    port = int(fake.stdout.readline().split()[1])
    url = f"http://127.0.0.1:{port}"
    try:
        with Proc("goodput") as proc:
            config = proc.root / "config" / "argentos" / "argentd.toml"
            config.parent.mkdir(parents=True)
            config.write_text(f'[gateway]\nlisten = "127.0.0.1:0"\n\n'
                              f'[upstream.anthropic]\nanthropic = "{url}"\n')
            proc.start_argentd({f"anthropic:{k.label}": {"provider": "anthropic",
                                                         "type": "api-key", "token": k.key}
                                for k in keys})
            client = Client(proc.socket)
            gw = client.status().gateway
            client.close()
            assert gw is not None and gw.url
            token = (Path(proc.env["XDG_RUNTIME_DIR"]) / "argentos" / "gateway.token"
                     ).read_text().strip()
            urllib.request.urlopen(urllib.request.Request(url + "/admin/reset", method="POST"))
            counts = {"ok": 0, "429": 0, "other": 0}
            lock = threading.Lock()
            stop = time.monotonic() + seconds

            def worker() -> None:
                sdk = anthropic.Anthropic(base_url=gw.url + "/anthropic", api_key=token)
                while time.monotonic() < stop:
                    try:
                        sdk.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=[
                            {"role": "user", "content": "hi"}])
                        what = "ok"
                    except anthropic.RateLimitError:
                        what = "429"
                    except anthropic.APIError:
                        what = "other"
                    with lock:
                        counts[what] += 1

            t0 = time.monotonic()
            threads = [threading.Thread(target=worker) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.monotonic() - t0
            stats = json.load(urllib.request.urlopen(url + "/admin/stats"))
    finally:
        fake.terminate()
        fake.wait(10)
    served = sum(k.get("ok", 0) for k in stats["keys"].values())
    limited = sum(k.get("429", 0) for k in stats["keys"].values())
    cap = sum(fp.capacity(k.shape, stats["elapsed"]) for k in keys)
    answers = sum(counts.values())
    return {"seconds": round(elapsed, 1), "capacity": round(cap, 1), "served": served,
            "upstream_429": limited, "goodput": round(served / cap, 4),
            "client_answers": answers, "client_429": counts["429"],
            "client_other_errors": counts["other"],
            "client_429_share": round(counts["429"] / answers, 4) if answers else None}


async def measure_litellm(exe: str, fake_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """The same round trips through LiteLLM's proxy (one worker) in front of the same fake."""
    import socket as _socket

    with _socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = Path(tempfile.mkdtemp(prefix="litellm-"))
    cfg = folder / "config.yaml"
    key = "sk-ant-api03-litellm" + "x" * 60
    cfg.write_text(f"""model_list:
  - model_name: claude-sonnet-4-5
    litellm_params:
      model: anthropic/claude-sonnet-4-5
      api_base: {fake_url}
      api_key: {key}
general_settings:
  master_key: sk-bench-master
litellm_settings:
  telemetry: false
""")
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    with open(folder / "log", "wb") as log:
        proxy = subprocess.Popen([exe, "--config", str(cfg), "--host", "127.0.0.1", "--port",
                                  str(port), "--num_workers", "1"], env=env,
                                 stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(base + "/health/liveliness", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or proxy.poll() is not None:
                    return {"error": "LiteLLM's proxy did not start: "
                            + (folder / "log").read_text()[-500:]}
                await asyncio.sleep(0.5)
        out: dict[str, Any] = {}
        path = {"litellm": (base, "sk-bench-master")}
        for name, clients, total, stream in measurements(args):
            got = await interleaved(path, clients, total, proxy.pid, stream=stream)
            out[name] = latency_summary(got["samples"]["litellm"])
        out["streams"] = await many_streams(base, "sk-bench-master", args.streams, proxy.pid)
        return out
    finally:
        proxy.terminate()
        proxy.wait(20)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time `pid` has used so far, from /proc (Linux only)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def us(ns: float) -> float:
    return round(ns / 1000, 1)


def start_relay(fake_url: str) -> tuple[subprocess.Popen[bytes], str]:
    """`relay.py` in front of the fake: the floor of any hop (it reads nothing)."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "relay.py"),
                             fake_url.removeprefix("http://")], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    url = proc.stdout.readline().decode().strip()
    if not url.startswith("http://"):
        raise RuntimeError("the relay did not start")
    return proc, url


def measurements(args: argparse.Namespace) -> list[tuple[str, int, int, bool]]:
    """(name, clients, requests, streaming) of each latency measurement."""
    return [("c1", 1, args.requests, False), ("c32", 32, args.requests, False),
            ("first_chunk", 1, args.requests // 4, True)]


ROUNDS: Final = 8
"""Slices each path's requests are cut into, the paths taking turns: whatever
drifts over a run (the VM, the SDK process warming up) meets all three alike."""


async def interleaved(paths: dict[str, tuple[str, str]], clients: int, total: int,
                      pid: int, *, stream: bool = False) -> dict[str, Any]:
    """Round trips (or first stream events) on each path (name -> base URL, key), the
    paths taking turns in `ROUNDS` slices; the samples of each, and the daemon's CPU
    spent in the gateway's slices."""
    import anthropic

    sdks = {name: anthropic.AsyncAnthropic(base_url=url, api_key=key, max_retries=0)
            for name, (url, key) in paths.items()}
    samples: dict[str, list[int]] = {name: [] for name in paths}
    per_round = max(1, total // ROUNDS // clients)
    messages: Any = [{"role": "user", "content": "hi"}]

    async def one(sdk: anthropic.AsyncAnthropic, out: list[int]) -> None:
        t = time.perf_counter_ns()
        if not stream:
            await sdk.messages.create(model="claude-sonnet-4-5", max_tokens=8,
                                      messages=messages)
            out.append(time.perf_counter_ns() - t)
            return
        first: int | None = None
        events = await sdk.messages.create(model="claude-sonnet-4-5", max_tokens=8,
                                           stream=True, messages=messages)
        async for _event in events:  # read to the end, as a client does: the
            if first is None:         # connections stay open for the next stream
                first = time.perf_counter_ns() - t
        assert first is not None
        out.append(first)

    async def worker(sdk: anthropic.AsyncAnthropic, out: list[int]) -> None:
        for _ in range(per_round):
            await one(sdk, out)

    for sdk in sdks.values():
        for _ in range(WARM_UP):  # warm the connections up
            await one(sdk, [])
    cpu = 0.0
    for _ in range(ROUNDS):
        for name, sdk in sdks.items():
            before = cpu_seconds(pid)
            await asyncio.gather(*(worker(sdk, samples[name]) for _ in range(clients)))
            if name == "gateway":
                cpu += cpu_seconds(pid) - before
    for sdk in sdks.values():
        await sdk.close()
    return {"samples": samples, "gateway_cpu": cpu}


async def measure(fake_url: str, gw_url: str, token: str, args: argparse.Namespace,
                  pid: int, relay_url: str) -> dict[str, Any]:
    key = "sk-ant-api03-direct" + "x" * 60
    paths = {"direct": (fake_url, key), "relay": (relay_url, key),
             "gateway": (gw_url + "/anthropic", token)}
    out: dict[str, Any] = {}
    for name, clients, total, stream in measurements(args):
        got = await interleaved(paths, clients, total, pid, stream=stream)
        d, r, g = (latency_summary(got["samples"][p]) for p in ("direct", "relay", "gateway"))
        out[name] = {
            "direct": d, "gateway": g, "relay": r,
            "added_p50_us": round(g["p50_us"] - d["p50_us"], 1),
            "added_p99_us": round(g["p99_us"] - d["p99_us"], 1),
            "relay_added_p50_us": round(r["p50_us"] - d["p50_us"], 1),
            # the daemon's CPU per request: what the gateway costs, less swayed by
            # what else runs than the latencies are
            "daemon_cpu_us": round(got["gateway_cpu"] / len(got["samples"]["gateway"]) * 1e6,
                                   1),
        }
    out["streams"] = await many_streams(gw_url + "/anthropic", token, args.streams, pid)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--streams", type=int, default=256)
    parser.add_argument("--hold", type=float, default=3.0,
                        help="seconds the fake holds each of the many streams open")
    parser.add_argument("--goodput", type=float, default=20.0,
                        help="seconds of the goodput run (0: skip it)")
    parser.add_argument("--litellm", action="store_true", help="also measure LiteLLM's proxy")
    parser.add_argument("--litellm-bin", help="its `litellm` executable (default: on PATH)")
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": machine()}
    fake, fake_url = start_fake(args.hold)
    relay, relay_url = start_relay(fake_url)
    try:
        with Proc("gateway") as proc:
            gw_url, token = start_argentd(proc, fake_url)
            result |= asyncio.run(measure(fake_url, gw_url, token, args, proc.pid, relay_url))
    finally:
        for server in (relay, fake):
            server.terminate()
            server.wait(10)
    if args.goodput > 0:
        result["goodput"] = goodput(args.goodput)
    if args.litellm:
        exe = args.litellm_bin or shutil.which("litellm")
        if exe is None:
            result["litellm"] = "not installed (pip install 'litellm[proxy]')"
        else:
            fake, fake_url = start_fake(args.hold)
            try:
                result["litellm"] = asyncio.run(measure_litellm(exe, fake_url, args))
            finally:
                fake.terminate()
                fake.wait(10)
    rows = []
    for name in ("c1", "c32"):
        r = result[name]
        rows.append((f"create, {name[1:]} client(s)", r["direct"]["p50_us"],
                     r["gateway"]["p50_us"], r["added_p50_us"], r["direct"]["p99_us"],
                     r["gateway"]["p99_us"], r["added_p99_us"]))
    fc = result["first_chunk"]
    rows.append(("first stream event", fc["direct"]["p50_us"], fc["gateway"]["p50_us"],
                 fc["added_p50_us"], fc["direct"]["p99_us"], fc["gateway"]["p99_us"],
                 round(fc["gateway"]["p99_us"] - fc["direct"]["p99_us"], 1)))
    human = table(("µs", "direct p50", "gateway p50", "added p50", "direct p99",
                   "gateway p99", "added p99"), rows)
    human += ("\nthe floor of a hop (bench/relay.py, a byte relay that reads nothing) adds, "
              f"at p50: {result['c1']['relay_added_p50_us']} µs at 1 client, "
              f"{result['c32']['relay_added_p50_us']} at 32, "
              f"{fc['relay_added_p50_us']} to the first event")
    human += (f"\ndaemon CPU per request (user+system, µs): {result['c1']['daemon_cpu_us']}"
              f" at 1 client, {result['c32']['daemon_cpu_us']} at 32")
    s = result["streams"]
    human += (f"\n{s['streams']} streams open at once: daemon RSS {s['rss_before_mb']} MB"
              f" before, {s['rss_peak_mb']} MB at the peak")
    human += f"\nload average at start: {result['machine']['loadavg_at_start']}"
    if "goodput" in result:
        g = result["goodput"]
        human += (f"\ngoodput: {g['served']} of a capacity of {g['capacity']} in {g['seconds']} s"
                  f" = {g['goodput']:.1%}; upstream 429s {g['upstream_429']}; the SDKs saw "
                  f"{g['client_429']} 429s of {g['client_answers']} answers"
                  f" ({g['client_429_share']:.2%}), {g['client_other_errors']} other errors")
    ll = result.get("litellm")
    if isinstance(ll, dict) and "c1" in ll:
        human += (f"\nLiteLLM proxy: create p50/p99 {ll['c1']['p50_us']}/{ll['c1']['p99_us']} µs"
                  f" (1 client), {ll['c32']['p50_us']}/{ll['c32']['p99_us']} µs (32);"
                  f" first event p50 {ll['first_chunk']['p50_us']} µs;"
                  f" {ll['streams']['streams']} streams RSS {ll['streams']['rss_before_mb']}"
                  f" -> {ll['streams']['rss_peak_mb']} MB")
    elif ll is not None:
        human += f"\nLiteLLM proxy: {ll}"
    report(result, human)
    os._exit(0)


if __name__ == "__main__":
    main()

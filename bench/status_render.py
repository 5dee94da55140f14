"""How long `argentctl status` takes to print a big status: decode + render.

Builds the `status` reply of N profiles (JSON, as the daemon sends it), then
times decoding it and rendering it the way `argentctl status` does, into a
buffer. Prints the figures; not a test.

    .venv/bin/python bench/status_render.py [N] [--all | --provider NAME] [--windows]

`--windows` gives every anthropic profile a 5-hour and a weekly window (the
`Subscription windows` bars).
"""

from __future__ import annotations

import argparse
import io
import time

import msgspec
from rich.console import Console

from argent_client.protocol import StatusResult
from argent_client.render import status_tables


def status_json(n: int, now: float, windows: bool = False) -> bytes:
    providers = ["anthropic", "openai", "openrouter", "minimax"]
    profiles = []
    for i in range(n):
        provider = providers[i % len(providers)]
        cooling = i % 10 == 0
        profiles.append({
            "id": f"{provider}:p{i}", "provider": provider,
            "type": "setup-token" if provider == "anthropic" else "api-key",
            "label": f"profile {i}", "state": "cooldown" if cooling else "ready",
            "cooldown_until": now + 300 + i if cooling else None,
            "error_count": 1 if cooling else 0, "active_leases": i % 3,
            "fingerprint": f"sk-…{i:06x}", "source": "profile",
            "last_used": now - i, "last_error": "rate_limit" if cooling else None,
        })
        if windows and provider == "anthropic":
            profiles[-1]["windows"] = {
                "5h": {"utilization": (i % 101) / 100, "reset": now + 60 * (i % 300),
                       "status": "rejected" if i % 50 == 0 else "allowed"},
                "7d": {"utilization": (i % 37) / 36, "reset": now + 3600 * (i % 168),
                       "status": "allowed"},
            }
    reply = {"profiles": profiles, "leases": [], "routes": {},
             "config": {"profiles_path": "/tmp/auth-profiles.json", "loaded_at": now - 5,
                        "error": None}}
    return msgspec.json.encode(reply)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", type=int, nargs="?", default=10_000)
    parser.add_argument("--all", action="store_true")
    parser.add_argument("--provider")
    parser.add_argument("--windows", action="store_true")
    args = parser.parse_args()
    now = time.time()
    data = status_json(args.n, now, args.windows)
    t0 = time.perf_counter()
    status = msgspec.json.decode(data, type=StatusResult)
    t1 = time.perf_counter()
    buf = io.StringIO()
    console = Console(file=buf, width=200, highlight=False)
    kw = {}
    if args.all or args.provider:
        kw = {"show_all": args.all, "provider": args.provider}
    status_tables(status, now, console, **kw)  # type: ignore[arg-type]
    t2 = time.perf_counter()
    lines = buf.getvalue().count("\n")
    print(f"{args.n} profiles, {len(data)} bytes: decode {1000 * (t1 - t0):.1f} ms, "
          f"render {1000 * (t2 - t1):.1f} ms, {lines} lines")


if __name__ == "__main__":
    main()

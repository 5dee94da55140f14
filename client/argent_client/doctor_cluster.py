"""`argentctl doctor`'s cluster check: can the daemon reach Redis, and do clocks agree."""

from __future__ import annotations

from typing import Final

from .doctor import Check
from .protocol import ClusterStatus

MAX_SKEW: Final = 1.0
"""Seconds between this host's clock and Redis' TIME above which cooldown ends drift."""


def check_cluster(cluster: ClusterStatus) -> Check:
    """Reach, auth, latency and clock skew, as the daemon last saw them."""
    where = cluster.url or "the [cluster] url"
    if not cluster.connected:
        error = cluster.error or "not connected"
        if any(w in error for w in ("WRONGPASS", "NOAUTH", "AUTH", "invalid password")):
            fix = (f"set `password_ref` in [cluster] of argentd.toml to the password of {where}"
                   " (env:NAME, file:PATH or cmd:COMMAND), then restart argentd")
        elif "password_ref" in error:
            fix = "fix [cluster] password_ref in argentd.toml, then restart argentd"
        else:
            fix = (f"start Redis or Valkey at {where} (or fix [cluster] url in argentd.toml);"
                   " meanwhile this host goes on alone, and reconnects by itself")
        return Check("cluster", "fail", f"host {cluster.host} cannot reach {where}: {error}", fix)
    hosts = ", ".join(cluster.hosts) or cluster.host
    latency = "" if cluster.latency is None else f"; round trip {cluster.latency * 1000:.1f} ms"
    detail = f"host {cluster.host} in cluster {cluster.name!r} at {where} with {hosts}{latency}"
    if cluster.skew is not None and abs(cluster.skew) > MAX_SKEW:
        return Check(
            "cluster", "warn",
            f"{detail}; this clock is {cluster.skew:+.1f} s off Redis' TIME",
            "synchronise this host's clock (chrony or systemd-timesyncd): cooldowns other"
            " hosts set end off by the difference",
        )
    return Check("cluster", "ok", detail)

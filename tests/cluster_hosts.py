"""In-process hosts for the cluster tests: an Engine and its Cluster task each,
sharing one real redis-server (tests/redis_server.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import trio

from argent_client.protocol import LeaseParams, LeaseResult, ReportParams
from argentd.cluster import Cluster
from argentd.config import ClusterConfig, Config
from argentd.engine import Engine
from argentd.model import Profile, ProfileSet, Secret


def prof(pid: str, secret: str, **kw: Any) -> Profile:
    provider = pid.split(":", 1)[0]
    return Profile(id=pid, provider=provider, type="api-key", secret=Secret(secret), **kw)


class Host:
    """One host: an engine driven the way the server drives it, plus its cluster task."""

    def __init__(self, name: str, url: str, profiles: list[Profile],
                 config: Config | None = None, prefix: str = "argentd") -> None:
        self.name = name
        self.engine = Engine(ProfileSet(list(profiles)), config or Config(), now=time.time())
        self.served: list[tuple[int, Any]] = []
        self.cluster = Cluster(ClusterConfig(url=url, name=prefix, host=name), self.engine,
                               after_change=self.after_change)
        self.scope: trio.CancelScope | None = None

    def after_change(self) -> None:
        self.served.extend(self.engine.take_outbox().served)

    async def start(self, nursery: trio.Nursery, *, connected: bool = True) -> None:
        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with trio.CancelScope() as scope:
                self.scope = scope
                await self.cluster.run(task_status=task_status)

        await nursery.start(run)
        if connected:
            await wait_until(lambda: self.cluster.connected, what=f"{self.name} connected")

    def stop(self) -> None:
        assert self.scope is not None
        self.scope.cancel()

    def lease(self, provider: str = "anthropic", **kw: Any) -> LeaseResult:
        try:
            return self.engine.lease(LeaseParams(provider=provider, **kw), conn=None,
                                     now=time.time())
        finally:
            self.after_change()

    def release(self, lease_id: str, **kw: Any) -> None:
        self.engine.release(lease_id, now=time.time(), **kw)
        self.after_change()

    def report(self, **kw: Any) -> Any:
        try:
            return self.engine.report(ReportParams(**kw), conn=None, now=time.time())
        finally:
            self.after_change()


async def wait_until(cond: Callable[[], bool], *, timeout: float = 10.0,
                     what: str = "condition") -> float:
    """Poll `cond` every millisecond; returns the seconds it took. Fails after `timeout`."""
    start = time.perf_counter()
    with trio.move_on_after(timeout):
        while not cond():
            await trio.sleep(0.001)
        return time.perf_counter() - start
    raise AssertionError(f"timed out waiting for {what}")


async def lease_within(host: Host, wait: float, provider: str = "openai",
                       **kw: Any) -> LeaseResult | None:
    """A lease now, or within `wait` seconds (a waiter, as the server parks it); None if none."""
    from argent_client.protocol import NoProfileAvailable

    params = LeaseParams(provider=provider, wait=wait, **kw)
    try:
        return host.lease(provider, **kw)
    except NoProfileAvailable:
        if wait <= 0:
            return None
    wid = host.engine.wait(params, conn=None, now=time.time())
    host.after_change()
    deadline = time.monotonic() + wait + 1.0
    while time.monotonic() < deadline:
        for i, (w, result) in enumerate(host.served):
            if w == wid:
                del host.served[i]
                return result if isinstance(result, LeaseResult) else None
        host.engine.advance(time.time())
        host.after_change()
        await trio.sleep(0.002)
    host.engine.cancel_wait(wid)
    return None

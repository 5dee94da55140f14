"""The refresher's timing on fake time: an 8-hour token, a 300 s lead, backoff.

An in-process `Refresher` over a real `Engine`, a real credentials.json in
tmp_path and the real fake token endpoint (a thread). The trio clock is a
`MockClock` without autojump: fake time moves only when the test jumps it,
so the HTTP calls take no fake time at all and every time is exact; real
waits (for the endpoint's thread) go through a worker thread, which fake
time does not see.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from argent_client.protocol import LeaseParams
from argentd.config import Config, parse_config
from argentd.credentials import CredentialsStore
from argentd.engine import Engine
from argentd.oauth import Refresher
from argentd.profiles import load_profiles

from .conftest import write_json
from .fake_token_endpoint import FakeTokenEndpoint

T0 = 1_800_000_000.0
HOUR = 3600.0
PID = "anthropic:max"


@pytest.fixture
def endpoint() -> Iterator[FakeTokenEndpoint]:
    ep = FakeTokenEndpoint(lifetime=8 * HOUR)
    yield ep
    ep.close()


async def real_until(cond: Callable[[], object], timeout: float = 20.0) -> None:
    """Wait in real time (fake time stands still) until `cond()` holds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await trio.to_thread.run_sync(time.sleep, 0.01)


class Rig:
    def __init__(self, tmp_path: Path, ep: FakeTokenEndpoint, access: str, refresh: str,
                 expires: float) -> None:
        path = tmp_path / "auth-profiles.json"
        write_json(path, {PID: {"provider": "anthropic", "type": "oauth", "access": access,
                                "refresh": refresh, "expires": int(expires * 1000)}})
        self.config: Config = parse_config(
            f'[oauth.anthropic]\ntoken_url = "{ep.url}"\nclient_id = "c"\n'.encode())
        self.changes = 0
        self.served: list[tuple[int, object]] = []
        self.refresher = Refresher(lambda: self.engine,
                                   CredentialsStore(tmp_path / "credentials.json"),
                                   lambda: self.config.oauth, self.changed,
                                   clock=lambda: T0 + trio.current_time())
        profiles = self.refresher.overlay(load_profiles(path, {}))
        self.engine = Engine(profiles, self.config, now=T0)

    def changed(self) -> None:
        self.changes += 1
        self.served += self.engine.take_outbox().served

    def token(self) -> str:
        return self.engine.profile(PID).secret.reveal()

    async def idle(self) -> bool:
        """Whether the refresher has nothing in flight once every task is blocked."""
        await trio.testing.wait_all_tasks_blocked()
        return not self.refresher._busy


@pytest.mark.trio
async def test_refresher_refreshes_exactly_refresh_before_the_end(
    tmp_path: Path, endpoint: FakeTokenEndpoint, mock_clock: trio.testing.MockClock
) -> None:
    a0, r0 = endpoint.login()
    rig = Rig(tmp_path, endpoint, a0, r0, T0 + 8 * HOUR)
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.refresher.run)
        mock_clock.jump(8 * HOUR - 300 - 0.001)
        assert await rig.idle() and endpoint.calls == [] and rig.token() == a0
        mock_clock.jump(0.001)  # exactly 300 s before the end
        await real_until(lambda: rig.token() != a0)
        a1 = rig.token()
        p = rig.engine.profile(PID)
        assert p.oauth is not None and p.oauth.refreshed_at == T0 + 8 * HOUR - 300
        assert p.expires == T0 + 16 * HOUR - 300
        assert [c.refresh for c in endpoint.calls] == [r0]
        # The next one is due 300 s before the new token ends, not before.
        mock_clock.jump(8 * HOUR - 300 - 1)
        assert await rig.idle() and len(endpoint.calls) == 1
        mock_clock.jump(1)
        await real_until(lambda: rig.token() != a1)
        assert len(endpoint.calls) == 2 and endpoint.reuses == 0
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_refresher_backs_off_while_the_old_token_serves_then_expires(
    tmp_path: Path, endpoint: FakeTokenEndpoint, mock_clock: trio.testing.MockClock
) -> None:
    a0, r0 = endpoint.login()
    endpoint.modes[r0] = "500"
    rig = Rig(tmp_path, endpoint, a0, r0, T0 + 200)  # already within refresh_before
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.refresher.run)
        await real_until(lambda: rig.engine.profile(PID).oauth.error)  # type: ignore[union-attr]
        assert "HTTP 500" in (rig.engine.profile(PID).oauth.error or "")  # type: ignore[union-attr]
        # Backoff: 10 s, then 20 s, then 40 s; the old token serves meanwhile.
        for wait, calls in ((10, 2), (20, 3), (40, 4)):
            mock_clock.jump(wait - 0.01)
            assert await rig.idle() and len(endpoint.calls) == calls - 1
            got = rig.engine.lease(LeaseParams(provider="anthropic"), conn=1,
                                   now=T0 + trio.current_time())
            assert got.token == a0
            mock_clock.jump(0.01)
            await real_until(lambda n=calls: len(endpoint.calls) == n and rig.refresher._busy
                             == set())  # type: ignore[misc]
        # Past its end the token is not leased: `expired` until a refresh works.
        mock_clock.jump(200 - trio.current_time())
        assert rig.engine.state_of(PID, T0 + trio.current_time()) == "expired"
        waiter = rig.engine.wait(LeaseParams(provider="anthropic", wait=120), conn=2,
                                 now=T0 + trio.current_time())
        endpoint.modes[r0] = "ok"
        mock_clock.jump(80)
        await real_until(lambda: rig.token() != a0)
        assert rig.engine.state_of(PID, T0 + trio.current_time()) == "ready"
        (wid, result), = rig.served
        assert wid == waiter and result.token == rig.token()  # type: ignore[attr-defined]
        assert endpoint.reuses == 0
        nursery.cancel_scope.cancel()

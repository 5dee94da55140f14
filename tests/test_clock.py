"""argentd.clock: Unix time on trio's clock, following the wall clock across a suspend."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from argentd.clock import RESYNC_EVERY, TOLERANCE, Clock

from .inproc import EPOCH, profile, serving


class Wall:
    """A wall clock that runs with trio's clock, plus whatever a suspend added."""

    def __init__(self) -> None:
        self.suspended = 0.0

    def __call__(self) -> float:
        return EPOCH + trio.current_time() + self.suspended


def test_clock_outside_trio_reads_the_wall() -> None:
    assert Clock(lambda: 123.5).now() == 123.5
    assert Clock.fake(EPOCH).now() == EPOCH


@pytest.mark.trio
async def test_clock_fake_is_epoch_plus_trio_time(autojump_clock: trio.testing.MockClock) -> None:
    clock = Clock.fake(EPOCH)
    await trio.sleep(1500)
    assert clock.now() == EPOCH + 1500
    assert clock.resync() == 0.0 and clock.resync_every is None


@pytest.mark.trio
async def test_clock_follows_the_wall_after_a_suspend(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wall = Wall()
    clock = Clock(wall)
    assert clock.now() == EPOCH
    wall.suspended = TOLERANCE / 2  # jitter: ignored
    assert clock.resync() == 0.0 and clock.now() == EPOCH
    await trio.sleep(10)
    wall.suspended = 3600.0  # the laptop slept an hour; trio's clock stood still
    assert clock.now() == EPOCH + 10  # until re-synced
    assert clock.resync() == 3600.0
    assert clock.now() == EPOCH + 10 + 3600
    wall.suspended = 3590.0  # and a step back is followed too
    assert clock.resync() == -10.0


@pytest.mark.trio
async def test_clock_cooldown_ends_soon_after_a_suspend(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wall = Wall()
    async with serving(profile("anthropic:a"), clock=Clock(wall)) as s:
        sub = await s.connect()
        await sub.call("subscribe")
        await sub.call("report_failure", {"profile": "anthropic:a", "kind": "rate_limit"})
        await trio.sleep(1)
        wall.suspended = 120.0  # the cooldown (60 s) ended during the suspend
        event = await sub.event("cooldown_end")
        assert event["profile"] == "anthropic:a"
        assert trio.current_time() <= 1 + RESYNC_EVERY  # not 59 s later

"""Unix time read off trio's clock: the one clock of the server and the daemon.

The engine wants Unix seconds (cooldown ends and lease expiries are shown to
clients and written to `state.json`), and the server sleeps on trio's clock.
Reading the wall clock while sleeping on trio's would be two clocks: under
`trio.testing.MockClock` the sleeps are fake and the times real, so no test
could run the server in fake time. `Clock.now()` is `trio.current_time()`
plus an offset to the wall clock instead, so a sleep until a deadline wakes
exactly at it, in real time and in fake time alike.

The offset is taken from the wall clock on first use inside `trio.run`. The
two clocks drift apart when the machine sleeps (trio's monotonic clock
stands still during a suspend, the wall clock does not) or the wall clock is
stepped; `resync()` re-takes the offset when they differ by more than
`TOLERANCE`. The server's timer calls it on every wake and wakes at least
every `RESYNC_EVERY` seconds, so a resumed laptop ends its cooldowns on time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

import trio

__all__ = ["RESYNC_EVERY", "TOLERANCE", "Clock"]

log = logging.getLogger("argentd")

TOLERANCE: Final = 1.0
"""Seconds the two clocks may differ before `resync` re-takes the offset."""
RESYNC_EVERY: Final = 5.0
"""The longest the server's timer sleeps between two `resync` calls."""


class Clock:
    """Unix seconds on trio's clock.

    `wall` is the wall clock to follow (`time.time`); `None` with `epoch`
    makes a clock that never re-syncs: `now()` is `epoch + trio.current_time()`
    exactly, which is what tests under `MockClock` assert against.
    """

    def __init__(
        self, wall: Callable[[], float] | None = time.time, *, epoch: float = 0.0
    ) -> None:
        self.wall = wall
        self._offset: float | None = None if wall is not None else epoch

    @classmethod
    def fake(cls, epoch: float) -> Clock:
        """A clock fixed to `epoch` at trio time 0, for tests under `MockClock`."""
        return cls(None, epoch=epoch)

    @property
    def resync_every(self) -> float | None:
        """How often the timer should call `resync` (None: never needed)."""
        return RESYNC_EVERY if self.wall is not None else None

    def now(self) -> float:
        """Unix seconds. Outside `trio.run` (the daemon's start) the wall clock."""
        try:
            t = trio.current_time()
        except RuntimeError:
            return self.wall() if self.wall is not None else self._offset or 0.0
        if self._offset is None:
            assert self.wall is not None
            self._offset = self.wall() - t
        return t + self._offset

    def resync(self) -> float:
        """Follow the wall clock if it moved away; returns the step taken (0.0 if none)."""
        if self.wall is None:
            return 0.0
        t = trio.current_time()
        wall = self.wall()
        if self._offset is None:
            self._offset = wall - t
            return 0.0
        step = wall - (t + self._offset)
        if abs(step) <= TOLERANCE:
            return 0.0
        self._offset += step
        log.info("the wall clock moved %+.1f s against the monotonic clock (a suspend or a "
                 "clock change); following it", step)
        return step

"""Noticing a client that hangs up on its request, without a task per request.

A request in flight is a `Flight`: its exchange, when it began, and the
cancel scope it runs in. One watchdog task per gateway (`Hangups.run`) looks
at the flights every `WATCH_AFTER` seconds while there are any; for each
that has run at least that long it starts a watcher, which reads the
client's connection (`Exchange.until_gone`) and, when the client closed it
before the answer was finished, marks the flight `gone` and cancels its
scope (the wait for a profile, the upstream request, the stream). Most
answers are done long before: they cost a dict entry and a cancel scope,
not a task, a timer and a cancellation each. A hang-up is noticed between
`WATCH_AFTER` and twice that into a request, and at once after.
"""

from __future__ import annotations

import itertools
import logging
from typing import Final

import trio

from .http import Exchange

log = logging.getLogger("argentd.gateway")

WATCH_AFTER: Final = 0.05
"""Seconds into a request before its client connection is watched for a hang-up."""


class Flight:
    """One request in flight."""

    __slots__ = ("ex", "gone", "key", "scope", "since", "watch", "watch_done")

    def __init__(self, ex: Exchange, key: int) -> None:
        self.ex = ex
        self.key = key
        self.since = trio.current_time()
        self.scope = trio.CancelScope()
        """The scope the request runs in; cancelled when its client hangs up."""
        self.gone = False
        self.watch: trio.CancelScope | None = None
        self.watch_done: trio.Event | None = None


class Hangups:
    """The watchdog of one gateway."""

    def __init__(self) -> None:
        self._flights: dict[int, Flight] = {}
        self._keys = itertools.count()
        self._idle = True
        self._work = trio.Event()

    def add(self, ex: Exchange) -> Flight:
        flight = Flight(ex, next(self._keys))
        self._flights[flight.key] = flight
        if self._idle:
            self._idle = False
            self._work.set()
        return flight

    async def remove(self, flight: Flight) -> None:
        """The request is over; its watcher (if any) has stopped reading when this returns."""
        del self._flights[flight.key]
        if flight.watch is not None and flight.watch_done is not None:
            flight.watch.cancel()
            with trio.CancelScope(shield=True):
                await flight.watch_done.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                if not self._flights:
                    self._work = trio.Event()
                    self._idle = True
                    await self._work.wait()
                await trio.sleep(WATCH_AFTER)
                now = trio.current_time()
                for flight in list(self._flights.values()):
                    if flight.watch is None and now - flight.since >= WATCH_AFTER:
                        flight.watch = trio.CancelScope()
                        flight.watch_done = trio.Event()
                        nursery.start_soon(self._watch, flight)

    @staticmethod
    async def _watch(flight: Flight) -> None:
        assert flight.watch is not None and flight.watch_done is not None
        try:
            with flight.watch:
                await flight.ex.until_gone()
                if not flight.ex.finished:  # had it all: nothing left to cancel
                    flight.gone = True
                    flight.scope.cancel()
        except Exception:  # a fault in one watch must not end the gateway's others
            log.exception("gateway hang-up watch failed")
        finally:
            flight.watch_done.set()

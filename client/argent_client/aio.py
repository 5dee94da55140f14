"""The async client: anyio, so it runs under asyncio and trio alike.

Theory of operation: an `AsyncClient` keeps one connection (attached leases
live as long as it) and lets any number of tasks use it at once. Requests
are pipelined: each task sends its line and then waits for its reply. No
background task is needed — whichever waiting task holds the read lock
reads the next line and files it under its id, so a task whose reply
another task read finds it when it next gets the lock. A task that is
cancelled or times out abandons its request; a lease granted to it
afterwards is released as soon as its reply is read (see `_core.CallBook`).

Retries, timeouts and the environment fallback behave as in `Client`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.abc
import msgspec

from . import _core as C
from . import protocol as P
from .classify import Failure
from .paths import default_socket_path

__all__ = ["AsyncClient", "AsyncEventStream", "AsyncLease"]

log = logging.getLogger("argent_client")
T = TypeVar("T")
RECV_SIZE = 65536
CLEANUP_TIMEOUT = 5.0
"""How long a release/report on the way out of a cancelled block may take."""

_STREAM_ERRORS = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
                  OSError)


class AsyncLease(C.LeaseBase):
    """A granted lease; `async with` releases or reports on exit like `Lease`.

    Cleanup on the way out runs shielded from cancellation (bounded by
    `CLEANUP_TIMEOUT`), so a cancelled task still gives its lease back.
    """

    def __init__(self, client: AsyncClient, result: P.LeaseResult) -> None:
        super().__init__(result)
        self._client = client

    async def __aenter__(self) -> AsyncLease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.ended:
            return
        failure = self.failure_for(exc) if exc is not None else None
        with anyio.CancelScope(shield=exc is not None) as scope:
            if exc is not None:
                scope.deadline = anyio.current_time() + CLEANUP_TIMEOUT
            if failure is None:
                await self._release_quietly(self.usage, raising=exc is None)
                return
            try:
                await self._report(failure, failover=False)
            except P.ArgentError as err:
                log.warning("could not report %s on lease %s: %s", failure.kind, self.lease_id,
                            err)

    async def _release_quietly(self, usage: P.Usage | None, *, raising: bool) -> None:
        try:
            await self.release(usage=usage)
        except (P.LeaseNotFound, P.DaemonUnavailable) as err:
            log.warning("lease %s was already gone at release: %s", self.lease_id, err)
        except P.ArgentError as err:
            if raising:
                raise
            log.warning("could not release lease %s: %s", self.lease_id, err)

    async def release(self, *, usage: P.Usage | None = None) -> None:
        """End the lease as a success (see `Lease.release`)."""
        if self.ended:
            return
        self.ended = True
        if self.local:
            return
        await self._client.release(self.lease_id, usage=usage or self.usage, limits=self.limits)

    async def fail(
        self,
        kind: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
        message: str | None = None,
        failover: bool = False,
        model: str | None = None,
    ) -> P.ReportResult:
        """Report a failure by hand; ends the lease (see `Lease.fail`)."""
        failure = Failure(kind=kind, retry_after=retry_after, status=status,  # type: ignore[arg-type]
                          message=message)
        return await self._report(failure, failover=failover, model=model)

    async def _report(
        self, failure: Failure, *, failover: bool, model: str | None = None
    ) -> P.ReportResult:
        self.ended = True
        if self.local:
            return C.local_report()
        params = self.report_params(failure, failover=failover, model=model)
        result: P.ReportResult = await self._client._call("report_failure", params)
        return result

    async def renew(self, ttl: float | None = None) -> float:
        """Extend the lease; returns the new `expires_at`."""
        if not self.local:
            self.expires_at = (await self._client.renew(self.lease_id, ttl)).expires_at
        return self.expires_at


class _LeaseRequest:
    """What `AsyncClient.lease()` returns: `async with` it, or `await` it for the lease."""

    def __init__(self, client: AsyncClient, kwargs: dict[str, Any]) -> None:
        self._client = client
        self._kwargs = kwargs
        self._lease: AsyncLease | None = None

    async def _get(self) -> AsyncLease:
        return self._client.adopt(await self._client.acquire(**self._kwargs))

    def __await__(self) -> Generator[Any, None, AsyncLease]:
        return self._get().__await__()

    async def __aenter__(self) -> AsyncLease:
        self._lease = await self._get()
        return self._lease

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._lease is not None
        await self._lease.__aexit__(exc_type, exc, tb)


class _Conn:
    """One connection; safe to use from many tasks at once."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.reader = C.LineReader()
        self.book = C.CallBook()
        self.send_lock = anyio.Lock()
        self.read_lock = anyio.Lock()
        self.replies: dict[int, P.Incoming] = {}
        self.broken = False

    async def _send(self, data: bytes) -> None:
        try:
            async with self.send_lock:
                await self.stream.send(data)
        except _STREAM_ERRORS as exc:
            self.broken = True
            raise C.Broken(str(exc)) from None

    async def call(self, method: str, params: msgspec.Struct | None) -> P.Incoming:
        """Send a request and return its reply; raises `Broken`."""
        if self.broken:
            raise C.Broken("connection already broken")
        rid, line = self.book.start(method, params)
        try:
            await self._send(line)
            while rid not in self.replies:
                async with self.read_lock:
                    if rid in self.replies:
                        break
                    if self.broken:
                        raise C.Broken("connection broken")
                    await self._read_one()
            return self.replies.pop(rid)
        except BaseException:
            self.replies.pop(rid, None)
            self.book.abandon(rid)
            raise
        finally:
            self.book.finish(rid)

    async def _read_one(self) -> None:
        line = self.reader.pop_line()
        while line is None:
            try:
                data = await self.stream.receive(RECV_SIZE)
            except _STREAM_ERRORS as exc:
                self.broken = True
                raise C.Broken(str(exc) or type(exc).__name__) from None
            self.reader.feed(data)
            line = self.reader.pop_line()
        try:
            outcome = self.book.on_line(line)
        except C.Broken:
            self.broken = True
            raise
        if isinstance(outcome, C.Reply):
            self.replies[outcome.id] = outcome.message
        elif isinstance(outcome, bytes):
            await self._send(outcome)

    def peer_closed(self) -> bool:
        """Whether the daemon closed this connection (see `_core.peer_closed`)."""
        sock = self.stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        return sock is not None and C.peer_closed(sock)

    async def aclose(self) -> None:
        self.broken = True
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(*_STREAM_ERRORS):
                await self.stream.aclose()


class AsyncEventStream:
    """Events from `subscribe()`: `async for event in stream`; ends on EOF or `aclose()`.

    It subscribes when entered (`async with`), awaited, or first iterated;
    events before that are not seen. Prefer `async with client.subscribe()
    as events:` so the connection closes when the block ends. Raises
    `DaemonUnavailable` when it cannot subscribe.
    """

    def __init__(self, opener: Callable[[], Awaitable[tuple[_Conn, list[P.Event]]]]) -> None:
        self._opener = opener
        self._conn: _Conn | None = None
        self._early: list[P.Event] = []
        self._closed = False

    async def _ensure(self) -> _Conn:
        if self._conn is None:
            self._conn, self._early = await self._opener()
        return self._conn

    def __await__(self) -> Generator[Any, None, AsyncEventStream]:
        async def opened() -> AsyncEventStream:
            await self._ensure()
            return self

        return opened().__await__()

    def __aiter__(self) -> AsyncIterator[P.Event]:
        return self

    async def __anext__(self) -> P.Event:
        conn = await self._ensure() if not self._closed else None
        if self._early:
            return self._early.pop(0)
        while conn is not None and not self._closed:
            line = conn.reader.pop_line()
            if line is None:
                try:
                    data = await conn.stream.receive(RECV_SIZE)
                except _STREAM_ERRORS:
                    await self.aclose()
                    break
                conn.reader.feed(data)
                continue
            event = _event_of(line)
            if event is not None:
                return event
        raise StopAsyncIteration

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            if self._conn is not None:
                await self._conn.aclose()

    async def __aenter__(self) -> AsyncEventStream:
        await self._ensure()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _event_of(line: bytes) -> P.Event | None:
    try:
        msg = P.decode_incoming(line)
        if msg.method == "event":
            return P.decode_event(msg.params)
    except (P.ParseError, msgspec.DecodeError):
        log.debug("skipping an unreadable line from argentd")
    return None


class AsyncClient:
    """An async connection to argentd; the same methods as `Client`, awaited.

    `async with AsyncClient() as client:` closes it at the end (ending its
    attached leases). Must be used from one event loop.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        timeout: float | None = 30.0,
        client_name: str | None = None,
        fallback_env: bool = True,
    ) -> None:
        self.socket_path = Path(socket_path) if socket_path is not None else default_socket_path()
        self.timeout = timeout
        self.client_name = client_name or C.default_client_name()
        self.fallback_env = fallback_env
        self._conn: _Conn | None = None
        self._connect_lock: anyio.Lock | None = None

    # ------------------------------------------------------------ plumbing

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection; the daemon ends every attached lease it held."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()

    close = aclose

    async def _open(self) -> anyio.abc.ByteStream:
        try:
            return await anyio.connect_unix(str(self.socket_path))
        except OSError as exc:
            raise C.unavailable(self.socket_path, exc) from None

    async def _get_conn(self) -> _Conn:
        if self._connect_lock is None:
            self._connect_lock = anyio.Lock()
        async with self._connect_lock:
            if self._conn is not None and not self._conn.broken and self._conn.peer_closed():
                await self._conn.aclose()
            if self._conn is None or self._conn.broken:
                self._conn = _Conn(await self._open())
            return self._conn

    async def _call(self, method: str, params: msgspec.Struct | None, *, wait: float = 0.0) -> Any:
        """Send one request and return its typed result (retries as in `Client`)."""
        timeout = C.call_timeout(self.timeout, wait)
        try:
            with anyio.fail_after(timeout):
                msg = await self._call_retrying(method, params)
        except TimeoutError:
            raise C.timed_out(self.socket_path, method, timeout) from None
        return C.result_of(method, msg)

    async def _call_retrying(self, method: str, params: msgspec.Struct | None) -> P.Incoming:
        for attempt in (1, 2):
            conn = await self._get_conn()
            try:
                return await conn.call(method, params)
            except C.Broken:
                if self._conn is conn:
                    self._conn = None
                await conn.aclose()
                if attempt == 2 or not C.retry_safe(method, params):
                    raise C.connection_lost(self.socket_path, method, attempt == 2) from None
                log.info("connection to argentd lost; sending %s again on a new one", method)
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------ methods

    async def hello(self) -> P.HelloResult:
        result: P.HelloResult = await self._call("hello", None)
        return result

    async def acquire(
        self,
        provider: str | None = None,
        *,
        route: str | None = None,
        model: str | None = None,
        session: str | None = None,
        ttl: float | None = None,
        wait: float | None = None,
        detached: bool = False,
    ) -> P.LeaseResult:
        """The raw `lease` method (see `Client.acquire`)."""
        params = C.lease_params(self.client_name, provider, route, model, session, ttl, wait,
                                detached)
        try:
            result: P.LeaseResult = await self._call("lease", params, wait=params.wait)
        except P.DaemonUnavailable as exc:
            if not self.fallback_env or exc.data.get("reason") != "unreachable":
                raise
            fallback = C.env_lease(provider, model, ttl)
            if fallback is None:
                raise
            return fallback
        return result

    def lease(
        self,
        provider: str | None = None,
        *,
        route: str | None = None,
        model: str | None = None,
        session: str | None = None,
        ttl: float | None = None,
        wait: float | None = None,
        detached: bool = False,
    ) -> _LeaseRequest:
        """`async with client.lease(...) as lease:` (or `lease = await client.lease(...)`)."""
        return _LeaseRequest(self, {
            "provider": provider, "route": route, "model": model, "session": session,
            "ttl": ttl, "wait": wait, "detached": detached,
        })

    def adopt(self, result: P.LeaseResult) -> AsyncLease:
        """Wrap a `LeaseResult` (e.g. a failover's `next`) in an `AsyncLease`."""
        return AsyncLease(self, result)

    async def renew(self, lease_id: str, ttl: float | None = None) -> P.RenewResult:
        if C.is_local(lease_id):
            return P.RenewResult(expires_at=time.time() + (ttl or C.ENV_TTL))
        result: P.RenewResult = await self._call("renew", P.RenewParams(lease_id=lease_id,
                                                                          ttl=ttl))
        return result

    async def release(
        self, lease_id: str, *, usage: P.Usage | None = None, limits: P.Limits | None = None
    ) -> P.ReleaseResult:
        if C.is_local(lease_id):
            return P.ReleaseResult()
        params = P.ReleaseParams(lease_id=lease_id, usage=usage, limits=limits)
        result: P.ReleaseResult = await self._call("release", params)
        return result

    async def report_failure(
        self,
        lease_id: str | None = None,
        *,
        kind: str,
        profile: str | None = None,
        retry_after: float | None = None,
        status: int | None = None,
        message: str | None = None,
        model: str | None = None,
        limits: P.Limits | None = None,
        failover: bool = False,
    ) -> P.ReportResult:
        if lease_id is not None and C.is_local(lease_id):
            return C.local_report()
        params = P.ReportParams(
            kind=kind,  # type: ignore[arg-type]
            lease_id=lease_id, profile=profile, retry_after=retry_after, status=status,
            message=message, model=model, limits=limits, failover=failover,
        )
        result: P.ReportResult = await self._call("report_failure", params)
        return result

    async def status(self) -> P.StatusResult:
        result: P.StatusResult = await self._call("status", None)
        return result

    async def reset(self, profile: str) -> P.ProfileStateResult:
        result: P.ProfileStateResult = await self._call("reset", P.ProfileParams(profile))
        return result

    async def disable(self, profile: str) -> P.ProfileStateResult:
        result: P.ProfileStateResult = await self._call("disable", P.ProfileParams(profile))
        return result

    async def enable(self, profile: str) -> P.ProfileStateResult:
        result: P.ProfileStateResult = await self._call("enable", P.ProfileParams(profile))
        return result

    async def reload(self) -> P.ReloadResult:
        result: P.ReloadResult = await self._call("reload", None)
        return result

    async def metrics(self) -> P.MetricsResult:
        result: P.MetricsResult = await self._call("metrics", None)
        return result

    def subscribe(self) -> AsyncEventStream:
        """The stream of events, on a connection of its own (opened on first use).

        `async with client.subscribe() as events: async for event in events:`.
        """
        return AsyncEventStream(self._subscribed)

    async def _subscribed(self) -> tuple[_Conn, list[P.Event]]:
        conn = _Conn(await self._open())
        try:
            with anyio.fail_after(self.timeout):
                rid, line = conn.book.start("subscribe", None)
                early: list[P.Event] = []
                await conn._send(line)
                while True:
                    incoming = conn.reader.pop_line()
                    if incoming is None:
                        try:
                            data = await conn.stream.receive(RECV_SIZE)
                        except _STREAM_ERRORS:
                            raise C.Broken("end of stream") from None
                        conn.reader.feed(data)
                        continue
                    outcome = conn.book.on_line(incoming)
                    if isinstance(outcome, C.Reply) and outcome.id == rid:
                        C.result_of("subscribe", outcome.message)
                        break
                    event = _event_of(incoming)
                    if event is not None:
                        early.append(event)
        except TimeoutError:
            await conn.aclose()
            raise C.timed_out(self.socket_path, "subscribe", self.timeout) from None
        except C.Broken:
            await conn.aclose()
            raise C.connection_lost(self.socket_path, "subscribe", False) from None
        except BaseException:
            await conn.aclose()
            raise
        return conn, early

    async def call_with_failover(
        self,
        fn: Callable[[AsyncLease], Awaitable[T]],
        *,
        provider: str | None = None,
        route: str | None = None,
        model: str | None = None,
        session: str | None = None,
        attempts: int = 3,
        wait: float | None = None,
    ) -> T:
        """Await `fn(lease)`; on failure move to the next lease (`Client.call_with_failover`)."""
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        lease = await self.lease(provider, route=route, model=model, session=session, wait=wait)
        for attempt in range(1, attempts + 1):
            try:
                value = await fn(lease)
            except BaseException as exc:
                failure = None if lease.ended else lease.failure_for(exc)
                if failure is None:
                    with anyio.CancelScope(shield=True) as scope:
                        scope.deadline = anyio.current_time() + CLEANUP_TIMEOUT
                        await lease._release_quietly(lease.usage, raising=False)
                    raise
                last = attempt == attempts
                failed = lease.profile
                try:
                    report = await lease._report(failure, failover=not last)
                except P.ArgentError as err:
                    log.warning("could not report %s: %s", failure.kind, err)
                    raise exc from None
                if last:
                    raise
                if report.next is not None:
                    lease = self.adopt(report.next)
                elif wait is not None:
                    try:
                        lease = await self.lease(provider, route=route, model=model,
                                                 session=session, wait=wait)
                    except P.ArgentError:
                        raise exc from None
                else:
                    raise
                log.info("%s on %s; trying %s", failure.kind, failed, lease.profile)
                continue
            await lease._release_quietly(lease.usage, raising=False)
            return value
        raise AssertionError("unreachable")  # pragma: no cover

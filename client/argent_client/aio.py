"""The async client: anyio, so it runs under asyncio and trio alike.

Theory of operation: an `AsyncClient` keeps one connection (attached leases
live as long as it) and lets any number of tasks use it at once. Requests
are pipelined: each task sends its line and then waits for its reply. No
background task is needed — whichever waiting task holds the read lock
reads the next line and files it under its id, so a task whose reply
another task read finds it when it next gets the lock. A task that is
cancelled or times out abandons its request; a lease granted to it
afterwards is released as soon as its reply is read (see `_wire.CallBook`).

Retries (`_wire.Retry`), the steps at a lease's end (`_core`), the socket
check (`peer`), timeouts and the environment fallback are those of `Client`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Generator
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.abc
import msgspec

from . import _core as C
from . import _wire as W
from . import protocol as P
from ._async_io import _STREAM_ERRORS, AsyncEventStream, _Conn
from ._base import ClientBase
from .classify import Failure
from .peer import check_folder, check_peer

__all__ = ["AsyncClient", "AsyncEventStream", "AsyncLease"]

log = logging.getLogger("argent_client")
T = TypeVar("T")
CLEANUP_TIMEOUT = 5.0
"""How long a release/report on the way out of a cancelled block may take."""



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
        await self._client._run(C.exit_steps(self, exc))

    async def release(self, *, usage: P.Usage | None = None, success: bool = True) -> None:
        """End the lease (see `Lease.release`)."""
        await self._client._run(C.release_steps(self, quiet=False, usage=usage,
                                                success=success))

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
        result: P.ReportResult = await self._client._run(
            C.report_steps(self, failure, failover=failover, model=model))
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


class AsyncClient(ClientBase):
    """An async connection to argentd; the same methods as `Client`, awaited.

    `async with AsyncClient() as client:` closes it at the end (ending its
    attached leases). Must be used from one event loop.
    """

    def _setup(self) -> None:
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
        check_folder(self.socket_path)
        try:
            stream = await anyio.connect_unix(str(self.socket_path))
        except OSError as exc:
            raise W.unavailable(self.socket_path, exc) from None
        try:
            check_peer(stream.extra(anyio.abc.SocketAttribute.raw_socket), self.socket_path)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            raise
        return stream

    async def _get_conn(self) -> _Conn:
        if self._connect_lock is None:
            self._connect_lock = anyio.Lock()
        async with self._connect_lock:
            if self._conn is None or self._conn.broken:
                self._conn = _Conn(await self._open())
            return self._conn

    async def _call(self, method: str, params: msgspec.Struct | None, *, wait: float = 0.0) -> Any:
        """Send one request and return its typed result (`_wire.Retry` for retries)."""
        timeout = W.call_timeout(self.timeout, wait)
        try:
            with anyio.fail_after(timeout):
                msg = await self._call_retrying(method, params)
        except TimeoutError:
            raise W.timed_out(self.socket_path, method, timeout) from None
        return W.result_of(method, msg)

    async def _call_retrying(self, method: str, params: msgspec.Struct | None) -> P.Incoming:
        retry = W.Retry(self.socket_path, method, params)
        while True:
            conn = await self._get_conn()
            try:
                return await conn.call(method, params)
            except W.Broken as exc:
                if self._conn is conn:
                    self._conn = None
                await conn.aclose()
                retry.again(exc, fresh=conn.fresh)

    async def _run(self, steps: C.Steps, fn: Callable[[AsyncLease], Awaitable[Any]] | None = None,
                   relet: Callable[[], Awaitable[AsyncLease]] | None = None) -> Any:
        """Run a lease's steps (`_core`) like `Client._run`, shielding cleanup calls."""
        run = C.Runner(steps)
        while (op := run.next()) is not None:
            try:
                match op:
                    case C.Call(method, params, cleanup=True):
                        with anyio.CancelScope(shield=True) as scope:
                            scope.deadline = anyio.current_time() + CLEANUP_TIMEOUT
                            run.answer = await self._call(method, params)
                    case C.Call(method, params):
                        run.answer = await self._call(method, params)
                    case C.Invoke(lease):
                        assert fn is not None and isinstance(lease, AsyncLease)
                        run.answer = await fn(lease)
                    case C.Adopt(result):
                        run.answer = self.adopt(result)
                    case C.Relet():
                        assert relet is not None
                        run.answer = await relet()
            except BaseException as exc:
                run.error = exc
        return run.value

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
        params = self._lease_params(provider, route, model, session, ttl, wait, detached)
        try:
            result: P.LeaseResult = await self._call("lease", params, wait=params.wait)
        except P.DaemonUnavailable as exc:
            return self._fallback(exc, params)
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
            return self._local_renew(ttl)
        result: P.RenewResult = await self._call("renew", P.RenewParams(lease_id=lease_id,
                                                                          ttl=ttl))
        return result

    async def release(
        self, lease_id: str, *, usage: P.Usage | None = None, limits: P.Limits | None = None,
        success: bool = True,
    ) -> P.ReleaseResult:
        if C.is_local(lease_id):
            return P.ReleaseResult()
        params = P.ReleaseParams(lease_id=lease_id, usage=usage, limits=limits, success=success)
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
        params = self._report_params(lease_id, kind, profile, retry_after, status, message,
                                     model, limits, failover)
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
        shake = W.Handshake(reader=conn.reader, book=conn.book)
        try:
            with anyio.fail_after(self.timeout):
                await conn._send(shake.line)
                while not shake.done():
                    try:
                        data = await conn.stream.receive(W.RECV_SIZE)
                    except _STREAM_ERRORS:
                        raise W.Broken("end of stream") from None
                    shake.reader.feed(data)
        except TimeoutError:
            await conn.aclose()
            raise W.timed_out(self.socket_path, "subscribe", self.timeout) from None
        except W.Broken:
            await conn.aclose()
            raise W.connection_lost(self.socket_path, "subscribe", False) from None
        except BaseException:
            await conn.aclose()
            raise
        return conn, shake.early

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

        async def relet() -> AsyncLease:
            return await self.lease(provider, route=route, model=model, session=session,
                                    wait=wait)

        return await self._run(  # type: ignore[no-any-return]
            C.failover_steps(await relet(), attempts=attempts, wait=wait), fn, relet)

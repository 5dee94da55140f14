"""The blocking client: stdlib sockets, one request at a time per `Client`.

Theory of operation: a `Client` opens its connection on first use and keeps
it, because a lease that is not `detached` lives only as long as the
connection that took it. Calls are serialised by a lock (share a `Client`
between threads freely; a `lease` that `wait`s holds the others up, so give
a thread that waits its own `Client`). Event notifications that arrive on
this connection are skipped; `subscribe()` opens a connection of its own.

A broken connection is retried once on a fresh one (see `_core` for which
requests are not); a socket that cannot be reached raises
`DaemonUnavailable`, except that `lease`/`acquire` for a provider then fall
back to the caller's own environment variable when `fallback_env` is on.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import msgspec

from . import _core as C
from . import protocol as P
from .classify import Failure
from .paths import default_socket_path

__all__ = ["Client", "EventStream", "Lease"]

log = logging.getLogger("argent_client")
T = TypeVar("T")
RECV_SIZE = 65536


class Lease(C.LeaseBase):
    """A granted lease; a context manager that releases or reports on exit.

    `with client.lease("anthropic") as lease:` — a clean exit releases (with
    the observed limits and recorded usage); an exception that `classify`
    recognises is reported as a failure and re-raised; any other exception
    (a bug in the agent's own code, Ctrl-C) releases without blaming the
    credential and is re-raised. A lease whose release finds it already
    gone (TTL expired, connection lost) only logs a warning.
    """

    def __init__(self, client: Client, result: P.LeaseResult) -> None:
        super().__init__(result)
        self._client = client

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.ended:
            return
        failure = self.failure_for(exc) if exc is not None else None
        if failure is None:
            self._release_quietly(self.usage, raising=exc is None)
            return
        try:
            self._report(failure, failover=False)
        except P.ArgentError as err:
            log.warning("could not report %s on lease %s: %s", failure.kind, self.lease_id, err)

    def _release_quietly(self, usage: P.Usage | None, *, raising: bool) -> None:
        try:
            self.release(usage=usage)
        except (P.LeaseNotFound, P.DaemonUnavailable) as err:
            log.warning("lease %s was already gone at release: %s", self.lease_id, err)
        except P.ArgentError as err:
            if raising:
                raise
            log.warning("could not release lease %s: %s", self.lease_id, err)

    def release(self, *, usage: P.Usage | None = None) -> None:
        """End the lease as a success, sending observed limits and usage.

        A second call, or a call on a local env lease, does nothing. Raises
        `LeaseNotFound` if the daemon no longer knows it.
        """
        if self.ended:
            return
        self.ended = True
        if self.local:
            return
        self._client.release(self.lease_id, usage=usage or self.usage, limits=self.limits)

    def fail(
        self,
        kind: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
        message: str | None = None,
        failover: bool = False,
        model: str | None = None,
    ) -> P.ReportResult:
        """Report a failure by hand; ends the lease. Returns the daemon's answer.

        With `failover=True` the answer's `next` is the next lease (wrap it
        with `client.adopt`). `model` cools the profile for that model only
        (when the provider's limit is per model); by default the cooldown is
        account-wide. A local env lease answers "ready" and no next.
        """
        failure = Failure(kind=kind, retry_after=retry_after, status=status,  # type: ignore[arg-type]
                          message=message)
        return self._report(failure, failover=failover, model=model)

    def _report(
        self, failure: Failure, *, failover: bool, model: str | None = None
    ) -> P.ReportResult:
        self.ended = True
        if self.local:
            return C.local_report()
        params = self.report_params(failure, failover=failover, model=model)
        result: P.ReportResult = self._client._call("report_failure", params)
        return result

    def renew(self, ttl: float | None = None) -> float:
        """Extend the lease; returns the new `expires_at`."""
        if not self.local:
            self.expires_at = self._client.renew(self.lease_id, ttl).expires_at
        return self.expires_at


class EventStream:
    """Events from `subscribe()`, on a connection of their own.

    Iterate it; it ends when the daemon closes the connection. `close()` (or
    leaving `with`) ends it from this side.
    """

    def __init__(self, sock: socket.socket, reader: C.LineReader, early: list[P.Event]) -> None:
        self._sock: socket.socket | None = sock
        self._reader = reader
        self._early = early

    def __iter__(self) -> Iterator[P.Event]:
        return self

    def __next__(self) -> P.Event:
        if self._early:
            return self._early.pop(0)
        while self._sock is not None:
            line = self._reader.pop_line()
            if line is None:
                try:
                    data = self._sock.recv(RECV_SIZE)
                except TimeoutError:
                    raise TimeoutError("no event from argentd within the idle timeout") from None
                except OSError:
                    data = b""
                if not data:
                    self.close()
                    break
                self._reader.feed(data)
                continue
            event = _event_of(line)
            if event is not None:
                return event
        raise StopIteration

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _event_of(line: bytes) -> P.Event | None:
    try:
        msg = P.decode_incoming(line)
        if msg.method == "event":
            return P.decode_event(msg.params)
    except (P.ParseError, msgspec.DecodeError):
        log.debug("skipping an unreadable line from argentd")
    return None


class Client:
    """A blocking connection to argentd.

    `socket_path` defaults to `paths.default_socket_path()` (`$ARGENT_SOCKET`
    or the runtime dir). `timeout` bounds each call (plus its `wait`); None
    waits forever. `client_name` is what `status` shows for this client's
    leases (default `program[pid]`). Every method raises the `ArgentError`
    subclass the daemon sent, or `DaemonUnavailable`.
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
        self._lock = threading.RLock()
        self._sock: socket.socket | None = None
        self._sock_timeout: float | None = None
        self._fresh = False
        """The connection was opened for the call in progress (nothing answered on it yet)."""
        self._reader = C.LineReader()
        self._book = C.CallBook()

    # ------------------------------------------------------------ plumbing

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; the daemon ends every attached lease it held."""
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _open(self, timeout: float | None) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(self.socket_path))
        except OSError as exc:
            sock.close()
            raise C.unavailable(self.socket_path, exc) from None
        # A blocking socket whose timeouts live in the kernel (SO_RCVTIMEO /
        # SO_SNDTIMEO): CPython then neither polls before each send and recv
        # nor needs an ioctl to change the timeout (9 system calls a request
        # down to 3).
        sock.settimeout(None)
        self._sock_timeout = None
        self._set_timeout(sock, timeout)
        return sock

    def _set_timeout(self, sock: socket.socket, timeout: float | None) -> None:
        if timeout == self._sock_timeout:
            return
        tv = C.timeval(timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        self._sock_timeout = timeout

    def _call(self, method: str, params: msgspec.Struct | None, *, wait: float = 0.0) -> Any:
        """Send one request and return its typed result (module doc for retries)."""
        timeout = C.call_timeout(self.timeout, wait)
        with self._lock:
            attempt = 1
            while attempt <= 2:
                if self._sock is None:
                    self._sock = self._open(timeout)
                    self._fresh = True
                    self._reader = C.LineReader()
                    self._book = C.CallBook()
                try:
                    msg = self._roundtrip(self._sock, method, params, timeout)
                except C.NotSent:
                    # The daemon closed this connection since the last call (a
                    # restart): the request never left, so a new connection may
                    # carry it without using up the one retry.
                    self._drop()
                    if self._fresh:
                        raise C.connection_lost(self.socket_path, method, True) from None
                    continue
                except C.Broken:
                    self._drop()
                    attempt += 1
                    if attempt > 2 or not C.retry_safe(method, params):
                        raise C.connection_lost(self.socket_path, method, attempt > 2) from None
                    log.info("connection to argentd lost; sending %s again on a new one", method)
                    continue
                self._fresh = False
                return C.result_of(method, msg)
        raise AssertionError("unreachable")  # pragma: no cover

    def _roundtrip(
        self, sock: socket.socket, method: str, params: msgspec.Struct | None,
        timeout: float | None,
    ) -> P.Incoming:
        deadline = None if timeout is None else time.monotonic() + timeout
        rid, line = self._book.start(method, params)
        try:
            try:
                self._set_timeout(sock, timeout)
                sock.sendall(line)
            except (TimeoutError, BlockingIOError):
                raise C.Broken("send timed out") from None
            except (BrokenPipeError, ConnectionResetError) as exc:
                # A Unix socket refuses the first byte once its peer has closed.
                raise C.NotSent(str(exc)) from None
            except OSError as exc:
                raise C.Broken(str(exc)) from None
            while True:
                incoming = self._reader.pop_line()
                if incoming is None:
                    self._receive(sock, deadline, rid, method, timeout)
                    continue
                outcome = self._book.on_line(incoming)
                if isinstance(outcome, C.Reply) and outcome.id == rid:
                    return outcome.message
                if isinstance(outcome, bytes):
                    try:
                        sock.sendall(outcome)
                    except OSError as exc:
                        raise C.Broken(str(exc)) from None
        finally:
            self._book.finish(rid)

    def _receive(
        self, sock: socket.socket, deadline: float | None, rid: int, method: str,
        timeout: float | None,
    ) -> None:
        try:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError  # lines keep coming, but not ours
            data = sock.recv(RECV_SIZE)  # bounded by SO_RCVTIMEO: the call's timeout
        except (TimeoutError, BlockingIOError):
            self._book.abandon(rid)
            raise C.timed_out(self.socket_path, method, timeout) from None
        except OSError as exc:
            raise C.Broken(str(exc)) from None
        if not data:
            raise C.Broken("end of stream")
        self._reader.feed(data)

    # ------------------------------------------------------------ methods

    def hello(self) -> P.HelloResult:
        """`{server, version, protocol, pid}` of the daemon."""
        result: P.HelloResult = self._call("hello", None)
        return result

    def acquire(
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
        """The raw `lease` method: a `LeaseResult` the caller must release.

        Raises `NoProfileAvailable`, `UnknownProvider`, `UnknownRoute`, or
        `DaemonUnavailable` (when the env fallback is off or has no variable
        for `provider`; a route cannot fall back).
        """
        params = C.lease_params(self.client_name, provider, route, model, session, ttl, wait,
                                detached)
        try:
            result: P.LeaseResult = self._call("lease", params, wait=params.wait)
        except P.DaemonUnavailable as exc:
            fallback = self._fallback(exc, provider, model, ttl)
            if fallback is None:
                raise
            return fallback
        return result

    def _fallback(
        self, exc: P.DaemonUnavailable, provider: str | None, model: str | None,
        ttl: float | None,
    ) -> P.LeaseResult | None:
        if not self.fallback_env or exc.data.get("reason") != "unreachable":
            return None
        return C.env_lease(provider, model, ttl)

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
    ) -> Lease:
        """Take a lease now; use it as `with client.lease(...) as lease:` (see `Lease`)."""
        return self.adopt(self.acquire(provider, route=route, model=model, session=session,
                                       ttl=ttl, wait=wait, detached=detached))

    def adopt(self, result: P.LeaseResult) -> Lease:
        """Wrap a `LeaseResult` (e.g. a failover's `next`) in a `Lease`."""
        return Lease(self, result)

    def renew(self, lease_id: str, ttl: float | None = None) -> P.RenewResult:
        """Extend a lease; returns the new `expires_at`. Raises `LeaseNotFound`."""
        if C.is_local(lease_id):
            return P.RenewResult(expires_at=time.time() + (ttl or C.ENV_TTL))
        result: P.RenewResult = self._call("renew", P.RenewParams(lease_id=lease_id, ttl=ttl))
        return result

    def release(
        self, lease_id: str, *, usage: P.Usage | None = None, limits: P.Limits | None = None
    ) -> P.ReleaseResult:
        """End a lease as a success. Raises `LeaseNotFound`."""
        if C.is_local(lease_id):
            return P.ReleaseResult()
        params = P.ReleaseParams(lease_id=lease_id, usage=usage, limits=limits)
        result: P.ReleaseResult = self._call("release", params)
        return result

    def report_failure(
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
        """Report a failure on a lease (or a profile); ends the lease.

        Returns the profile's state, its cooldown and, with `failover`, the
        `next` lease. Raises `LeaseNotFound`, `UnknownProfile`, `InvalidParams`
        (an unknown `kind`).
        """
        if lease_id is not None and C.is_local(lease_id):
            return C.local_report()
        params = P.ReportParams(
            kind=kind,  # type: ignore[arg-type]
            lease_id=lease_id, profile=profile, retry_after=retry_after, status=status,
            message=message, model=model, limits=limits, failover=failover,
        )
        result: P.ReportResult = self._call("report_failure", params)
        return result

    def status(self) -> P.StatusResult:
        """Profiles, leases, config and routes (never a secret)."""
        result: P.StatusResult = self._call("status", None)
        return result

    def reset(self, profile: str) -> P.ProfileStateResult:
        """Clear a profile's cooldown, errors and invalid mark. Raises `UnknownProfile`."""
        result: P.ProfileStateResult = self._call("reset", P.ProfileParams(profile))
        return result

    def disable(self, profile: str) -> P.ProfileStateResult:
        """Stop leasing a profile until `enable`. Raises `UnknownProfile`."""
        result: P.ProfileStateResult = self._call("disable", P.ProfileParams(profile))
        return result

    def enable(self, profile: str) -> P.ProfileStateResult:
        """Lease a disabled profile again. Raises `UnknownProfile`."""
        result: P.ProfileStateResult = self._call("enable", P.ProfileParams(profile))
        return result

    def reload(self) -> P.ReloadResult:
        """Read the profiles file and config again; `error` says what was wrong."""
        result: P.ReloadResult = self._call("reload", None)
        return result

    def metrics(self) -> P.MetricsResult:
        """The daemon's counters as Prometheus text (`.text`)."""
        result: P.MetricsResult = self._call("metrics", None)
        return result

    def subscribe(self, *, idle_timeout: float | None = None) -> EventStream:
        """Open a connection of its own and return the stream of its events.

        `idle_timeout` (default: none) makes the stream raise `TimeoutError`
        when no event arrived for that long; the stream stays usable.
        Raises `DaemonUnavailable` if the daemon cannot be reached.
        """
        sock = self._open(self.timeout)
        try:
            reader = C.LineReader()
            book = C.CallBook()
            rid, line = book.start("subscribe", None)
            early: list[P.Event] = []
            sock.sendall(line)
            while True:
                incoming = reader.pop_line()
                if incoming is None:
                    data = sock.recv(RECV_SIZE)
                    if not data:
                        raise C.Broken("end of stream")
                    reader.feed(data)
                    continue
                outcome = book.on_line(incoming)
                if isinstance(outcome, C.Reply) and outcome.id == rid:
                    C.result_of("subscribe", outcome.message)
                    break
                event = _event_of(incoming)
                if event is not None:
                    early.append(event)
            sock.settimeout(idle_timeout)
        except TimeoutError:
            sock.close()
            raise C.timed_out(self.socket_path, "subscribe", self.timeout) from None
        except (OSError, C.Broken):
            sock.close()
            raise C.connection_lost(self.socket_path, "subscribe", False) from None
        except BaseException:
            sock.close()
            raise
        return EventStream(sock, reader, early)

    def call_with_failover(
        self,
        fn: Callable[[Lease], T],
        *,
        provider: str | None = None,
        route: str | None = None,
        model: str | None = None,
        session: str | None = None,
        attempts: int = 3,
        wait: float | None = None,
    ) -> T:
        """Call `fn(lease)` and return its result, moving to the next lease on failure.

        A classified failure is reported with `failover`; the daemon's `next`
        lease (another profile, or the route's next target) gets the next
        try. Without a `next`, a `wait` leases again (waiting that long),
        otherwise the error is re-raised. After `attempts` tries the last
        error is re-raised; an unclassified exception is re-raised at once
        (the lease is released). A clean return releases the lease.
        """
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        lease = self.lease(provider, route=route, model=model, session=session, wait=wait)
        for attempt in range(1, attempts + 1):
            try:
                value = fn(lease)
            except BaseException as exc:
                failure = None if lease.ended else lease.failure_for(exc)
                if failure is None:
                    lease._release_quietly(lease.usage, raising=False)
                    raise
                last = attempt == attempts
                failed = lease.profile
                try:
                    report = lease._report(failure, failover=not last)
                except P.ArgentError as err:
                    log.warning("could not report %s: %s", failure.kind, err)
                    raise exc from None
                if last:
                    raise
                if report.next is not None:
                    lease = self.adopt(report.next)
                elif wait is not None:
                    try:
                        lease = self.lease(provider, route=route, model=model, session=session,
                                           wait=wait)
                    except P.ArgentError:
                        raise exc from None
                else:
                    raise
                log.info("%s on %s; trying %s", failure.kind, failed, lease.profile)
                continue
            lease._release_quietly(lease.usage, raising=False)
            return value
        raise AssertionError("unreachable")  # pragma: no cover

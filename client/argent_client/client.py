"""The blocking client: stdlib sockets, one request at a time per `Client`.

Theory of operation: a `Client` opens its connection on first use and keeps
it, because a lease that is not `detached` lives only as long as the
connection that took it. Calls are serialised by a lock (share a `Client`
between threads freely; a `lease` that `wait`s holds the others up, so give
a thread that waits its own `Client`). Event notifications that arrive on
this connection are skipped; `subscribe()` opens a connection of its own.

What happens at a lease's end (release, report, failover) is decided once,
in `_core`'s steps, which `_run` carries out; when to send a request again
is `_wire.Retry`. Before its first request a connection checks that the
socket is this user's own (`peer`). A socket that cannot be reached raises
`DaemonUnavailable`, except that `lease`/`acquire` for a provider then fall
back to the caller's own environment variable when `fallback_env` is on.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

import msgspec

from . import _core as C
from . import _wire as W
from . import protocol as P
from ._base import ClientBase
from ._sync_io import EventStream
from .classify import Failure
from .peer import check_folder, check_peer

__all__ = ["Client", "EventStream", "Lease"]

log = logging.getLogger("argent_client")
T = TypeVar("T")


class Lease(C.LeaseBase):
    """A granted lease; a context manager that releases or reports on exit.

    `with client.lease("anthropic") as lease:` — a clean exit releases (with
    the observed limits and recorded usage); an exception that `classify`
    recognises is reported as a failure and re-raised (by profile if the
    lease already ended); any other exception (a bug in the agent's own
    code, Ctrl-C) releases without blaming the credential and is re-raised.
    A lease whose release finds it already gone (TTL expired, connection
    lost) only logs a warning.
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
        self._client._run(C.exit_steps(self, exc))

    def release(self, *, usage: P.Usage | None = None, success: bool = True) -> None:
        """End the lease, sending observed limits and usage.

        `success=False` ends it without claiming the credential worked.
        A second call, or a call on a local env lease, does nothing. Raises
        `LeaseNotFound` if the daemon no longer knows it.
        """
        self._client._run(C.release_steps(self, quiet=False, usage=usage, success=success))

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
        account-wide. A lease the daemon no longer knows is reported by its
        profile (no `next` then). A local env lease answers "ready" and no next.
        """
        failure = Failure(kind=kind, retry_after=retry_after, status=status,  # type: ignore[arg-type]
                          message=message)
        result: P.ReportResult = self._client._run(
            C.report_steps(self, failure, failover=failover, model=model))
        return result

    def renew(self, ttl: float | None = None) -> float:
        """Extend the lease; returns the new `expires_at`."""
        if not self.local:
            self.expires_at = self._client.renew(self.lease_id, ttl).expires_at
        return self.expires_at


class Client(ClientBase):
    """A blocking connection to argentd.

    `socket_path` defaults to `paths.default_socket_path()` (`$ARGENT_SOCKET`
    or the runtime dir). `timeout` bounds each call (plus its `wait`); None
    waits forever. `client_name` is what `status` shows for this client's
    leases (default `program[pid]`). Every method raises the `ArgentError`
    subclass the daemon sent, or `DaemonUnavailable` (also when the socket is
    not this user's own: `peer`).
    """

    def _setup(self) -> None:
        self._lock = threading.RLock()
        self._sock: socket.socket | None = None
        self._sock_timeout: float | None = None
        self._fresh = False
        """The connection was opened for the call in progress (nothing answered on it yet)."""
        self._reader = W.LineReader()
        self._book = W.CallBook()

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
        check_folder(self.socket_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(self.socket_path))
            check_peer(sock, self.socket_path)
        except OSError as exc:
            sock.close()
            raise W.unavailable(self.socket_path, exc) from None
        except BaseException:
            sock.close()
            raise
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
        tv = W.timeval(timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        self._sock_timeout = timeout

    def _call(self, method: str, params: msgspec.Struct | None, *, wait: float = 0.0) -> Any:
        """Send one request and return its typed result (`_wire.Retry` for retries)."""
        timeout = W.call_timeout(self.timeout, wait)
        retry = W.Retry(self.socket_path, method, params)
        with self._lock:
            while True:
                if self._sock is None:
                    self._sock = self._open(timeout)
                    self._fresh = True
                    self._reader = W.LineReader()
                    self._book = W.CallBook()
                try:
                    msg = self._roundtrip(self._sock, method, params, timeout)
                except W.Broken as exc:
                    self._drop()
                    retry.again(exc, fresh=self._fresh)
                    continue
                self._fresh = False
                return W.result_of(method, msg)

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
                raise W.Broken("send timed out") from None
            except OSError as exc:
                raise W.send_error(exc) from None
            while True:
                incoming = self._reader.pop_line()
                if incoming is None:
                    self._receive(sock, deadline, rid, method, timeout)
                    continue
                outcome = self._book.on_line(incoming)
                if isinstance(outcome, W.Reply) and outcome.id == rid:
                    return outcome.message
                if isinstance(outcome, bytes):
                    try:
                        sock.sendall(outcome)
                    except OSError as exc:
                        raise W.Broken(str(exc)) from None
        finally:
            self._book.finish(rid)

    def _receive(
        self, sock: socket.socket, deadline: float | None, rid: int, method: str,
        timeout: float | None,
    ) -> None:
        try:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError  # lines keep coming, but not ours
            data = sock.recv(W.RECV_SIZE)  # bounded by SO_RCVTIMEO: the call's timeout
        except (TimeoutError, BlockingIOError):
            self._book.abandon(rid)
            raise W.timed_out(self.socket_path, method, timeout) from None
        except OSError as exc:
            raise W.Broken(str(exc)) from None
        if not data:
            raise W.Broken("end of stream")
        self._reader.feed(data)

    def _run(self, steps: C.Steps, fn: Callable[[Lease], Any] | None = None,
             relet: Callable[[], Lease] | None = None) -> Any:
        """Run a lease's steps (`_core`): do what each asks, send back its answer."""
        run = C.Runner(steps)
        while (op := run.next()) is not None:
            try:
                match op:
                    case C.Call(method, params):
                        run.answer = self._call(method, params)
                    case C.Invoke(lease):
                        assert fn is not None and isinstance(lease, Lease)
                        run.answer = fn(lease)
                    case C.Adopt(result):
                        run.answer = self.adopt(result)
                    case C.Relet():
                        assert relet is not None
                        run.answer = relet()
            except BaseException as exc:
                run.error = exc
        return run.value

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
        params = self._lease_params(provider, route, model, session, ttl, wait, detached)
        try:
            result: P.LeaseResult = self._call("lease", params, wait=params.wait)
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
            return self._local_renew(ttl)
        result: P.RenewResult = self._call("renew", P.RenewParams(lease_id=lease_id, ttl=ttl))
        return result

    def release(
        self, lease_id: str, *, usage: P.Usage | None = None, limits: P.Limits | None = None,
        success: bool = True,
    ) -> P.ReleaseResult:
        """End a lease; as a success unless `success=False`. Raises `LeaseNotFound`."""
        if C.is_local(lease_id):
            return P.ReleaseResult()
        params = P.ReleaseParams(lease_id=lease_id, usage=usage, limits=limits, success=success)
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
        params = self._report_params(lease_id, kind, profile, retry_after, status, message,
                                     model, limits, failover)
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
            shake = W.Handshake()
            sock.sendall(shake.line)
            while not shake.done():
                data = sock.recv(W.RECV_SIZE)
                if not data:
                    raise W.Broken("end of stream")
                shake.reader.feed(data)
            sock.settimeout(idle_timeout)
        except TimeoutError:
            sock.close()
            raise W.timed_out(self.socket_path, "subscribe", self.timeout) from None
        except (OSError, W.Broken):
            sock.close()
            raise W.connection_lost(self.socket_path, "subscribe", False) from None
        except BaseException:
            sock.close()
            raise
        return EventStream(sock, shake.reader, shake.early)

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
        try. Without a `next`, a `wait` leases again (waiting that long), as
        does a failure whose lease had already ended (reported by profile);
        otherwise the error is re-raised. After `attempts` tries the last
        error is re-raised; an unclassified exception is re-raised at once
        (the lease is released). A clean return releases the lease.
        """
        if attempts < 1:
            raise ValueError("attempts must be at least 1")

        def relet() -> Lease:
            return self.lease(provider, route=route, model=model, session=session, wait=wait)

        return self._run(C.failover_steps(relet(), attempts=attempts, wait=wait), fn,  # type: ignore[no-any-return]
                         relet)

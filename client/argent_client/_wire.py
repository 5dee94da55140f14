"""The connection side both clients share, sans I/O: bytes in, decisions out.

`LineReader` cuts bytes into lines; `CallBook` numbers the requests of one
connection and says what an incoming line means for them; `Handshake` is the
`subscribe` exchange; `event_of` decodes an event notification; `Retry` is
the one rule for sending a request again. None of it touches a socket or a
clock: `Client` (client.py) and `AsyncClient` (aio.py) feed it what their
sockets read and do what it answers.

Theory of operation — sending again after a broken connection:

- A request refused at send (`NotSent`: EPIPE/ECONNRESET on the first byte,
  or a connection already known broken) never reached the daemon: it goes
  again on a new connection without using up the retry. A new connection
  that refuses it too means the daemon is gone.
- A request whose connection broke after it left (`Broken`) goes again once
  on a new connection, except requests that could grant a *detached* lease
  — a `lease` with `detached=True` and a `report_failure` with
  `failover=True` — and `subscribe`. A lease bound to a connection ends when
  that connection closes, so re-sending an attached `lease` can never leave
  two leases behind; a detached one the daemon granted just before the line
  dropped would live on until its TTL, so those are not sent twice (the
  caller gets `DaemonUnavailable` and decides).

No peek before each call: a dead connection shows itself at send.
"""

from __future__ import annotations

import itertools
import logging
import struct
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from . import protocol as P

log = logging.getLogger("argent_client")

MAX_REPLY: Final = 64 * 1024 * 1024
"""A daemon line longer than this is treated as a broken connection."""
RECV_SIZE: Final = 65536


class Broken(Exception):
    """The connection to the daemon broke (EOF, EPIPE, ECONNRESET)."""


class NotSent(Broken):
    """The connection was found broken before the request left: resending is safe."""


_REFUSED: Final = (BrokenPipeError, ConnectionResetError)


def send_error(exc: BaseException) -> Broken:
    """The `Broken` for an exception raised while sending a request line.

    A Unix socket refuses the first byte once its peer has closed (EPIPE, or
    ECONNRESET), so nothing of the line left: `NotSent`. Wrapped errors
    (anyio's `BrokenResourceError` from an `OSError`) are unwrapped.
    """
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, _REFUSED):
            return NotSent(str(cause))
        cause = cause.__cause__ or cause.__context__
    return Broken(str(exc) or type(exc).__name__)


class LineReader:
    """Accumulates bytes and hands out complete lines (without the newline)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def pop_line(self) -> bytes | None:
        """The next complete line, or None; raises `Broken` for an endless line."""
        at = self._buf.find(b"\n")
        if at < 0:
            if len(self._buf) > MAX_REPLY:
                raise Broken("the daemon sent a line longer than 64 MiB")
            return None
        line = bytes(self._buf[:at])
        del self._buf[: at + 1]
        return line

    def pop_event(self) -> P.Event | None:
        """The next event among the complete lines, or None when they are used up."""
        while (line := self.pop_line()) is not None:
            event = event_of(line)
            if event is not None:
                return event
        return None


def event_of(line: bytes) -> P.Event | None:
    """The event a line carries, or None (a reply, or a line that cannot be read)."""
    try:
        msg = P.decode_incoming(line)
        if msg.method == "event":
            return P.decode_event(msg.params)
    except (P.ParseError, msgspec.DecodeError):
        log.debug("skipping an unreadable line from argentd")
    return None


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply to a request still waited for."""

    id: int
    message: P.Incoming


class CallBook:
    """Request ids of one connection and what became of them.

    Ids increase per connection. A request whose caller gave up (timeout,
    cancellation) is *abandoned*: its late reply is dropped — except a
    granted lease, which is released at once so it does not sit idle
    until the connection closes.
    """

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.pending: dict[int, str] = {}
        self.abandoned: dict[int, str] = {}

    def start(self, method: str, params: msgspec.Struct | None) -> tuple[int, bytes]:
        """A new request: its id and the line to send."""
        rid = next(self._ids)
        self.pending[rid] = method
        return rid, P.encode_request(method, params, rid)

    def finish(self, rid: int) -> None:
        self.pending.pop(rid, None)

    def abandon(self, rid: int) -> None:
        method = self.pending.pop(rid, None)
        if method is not None:
            self.abandoned[rid] = method

    def on_line(self, line: bytes) -> Reply | bytes | None:
        """What an incoming line means.

        Returns a `Reply` for a pending request, the bytes of a release to
        send for an abandoned lease that was granted, or None (an event
        notification, a stale reply). Raises `Broken` for a line that is
        not JSON-RPC.
        """
        try:
            msg = P.decode_incoming(line)
        except P.ParseError as exc:
            raise Broken(str(exc)) from None
        if not isinstance(msg.id, int):
            return None
        if msg.id in self.pending:
            return Reply(msg.id, msg)
        method = self.abandoned.pop(msg.id, None)
        if method == "lease" and msg.error is msgspec.UNSET:
            try:
                lease_id = P.decode_result("lease", msg.result).lease_id
            except msgspec.DecodeError:
                return None
            rid = next(self._ids)
            self.abandoned[rid] = "release"
            log.debug("releasing lease %s whose request was given up", lease_id)
            return P.encode_request("release", P.ReleaseParams(lease_id=lease_id), rid)
        return None


@dataclass(slots=True)
class Handshake:
    """The `subscribe` exchange on a connection of its own.

    Send `line`, then feed what arrives to `reader` and call `done()` until
    it is True; events that arrive before the reply are kept in `early`.
    """

    reader: LineReader = field(default_factory=LineReader)
    book: CallBook = field(default_factory=CallBook)
    early: list[P.Event] = field(default_factory=list)
    line: bytes = b""
    _rid: int = 0

    def __post_init__(self) -> None:
        self._rid, self.line = self.book.start("subscribe", None)

    def done(self) -> bool:
        """Whether the reply arrived (raises the daemon's `ArgentError`, or `Broken`)."""
        while (incoming := self.reader.pop_line()) is not None:
            outcome = self.book.on_line(incoming)
            if isinstance(outcome, Reply) and outcome.id == self._rid:
                result_of("subscribe", outcome.message)
                return True
            event = event_of(incoming)
            if event is not None:
                self.early.append(event)
        return False


def result_of(method: str, msg: P.Incoming) -> Any:
    """The typed result of a reply; raises the `ArgentError` the daemon sent."""
    if msg.error is not msgspec.UNSET:
        raise P.error_from_wire(msg.error)
    try:
        return P.decode_result(method, msg.result)
    except msgspec.DecodeError as exc:
        raise P.InternalError(f"unexpected {method!r} result from argentd: {exc}") from None


def retry_safe(method: str, params: msgspec.Struct | None) -> bool:
    """Whether `method` may be sent again after it left (module doc)."""
    if isinstance(params, P.LeaseParams):
        return not params.detached
    if isinstance(params, P.ReportParams):
        return not params.failover
    return method != "subscribe"


class Retry:
    """The one retry rule (module doc) for one request; both clients ask it."""

    def __init__(self, path: object, method: str, params: msgspec.Struct | None) -> None:
        self.path = path
        self.method = method
        self.params = params
        self.retried = False

    def again(self, exc: Broken, *, fresh: bool) -> None:
        """Return if the request may go on a new connection; else raise `DaemonUnavailable`.

        `fresh`: the connection was opened for this request and nothing
        arrived on it yet.
        """
        if isinstance(exc, NotSent):
            if fresh:
                raise connection_lost(self.path, self.method, True) from None
            return
        if self.retried or not retry_safe(self.method, self.params):
            raise connection_lost(self.path, self.method, self.retried) from None
        self.retried = True
        log.info("connection to argentd lost; sending %s again on a new one", self.method)


def unavailable(path: object, exc: BaseException) -> P.DaemonUnavailable:
    """The error for a socket that cannot be reached."""
    reason = getattr(exc, "strerror", None) or type(exc).__name__
    return P.DaemonUnavailable(
        f"cannot reach argentd at {path} ({reason}); start it with `argentd` "
        "(or `argentctl service install`)",
        socket=str(path),
        reason="unreachable",
    )


def timed_out(path: object, method: str, seconds: float | None) -> P.DaemonUnavailable:
    return P.DaemonUnavailable(
        f"argentd at {path} did not answer {method!r} within {seconds:g}s",
        socket=str(path),
        reason="timeout",
    )


def connection_lost(path: object, method: str, retried: bool) -> P.DaemonUnavailable:
    why = (
        "again after a retry on a new connection"
        if retried
        else "and it was not retried because it may have granted a detached lease"
    )
    return P.DaemonUnavailable(
        f"the connection to argentd at {path} broke during {method!r} {why}",
        socket=str(path),
        reason="connection_lost",
    )


def timeval(timeout: float | None) -> bytes:
    """`timeout` as the `struct timeval` of SO_RCVTIMEO/SO_SNDTIMEO (0: wait forever)."""
    if timeout is None:
        return struct.pack("ll", 0, 0)
    timeout = max(timeout, 0.001)  # 0 would mean forever
    sec = int(timeout)
    return struct.pack("ll", sec, int((timeout - sec) * 1e6))


def call_timeout(timeout: float | None, wait: float | None) -> float | None:
    """The socket timeout for a call that may wait `wait` seconds in the daemon."""
    if timeout is None:
        return None
    return timeout + (wait or 0.0)

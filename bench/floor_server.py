"""The floor: a minimal trio server with argentd's framing and no engine.

It speaks the same wire protocol as argentd (JSON-RPC 2.0, one object a
line, pipelined lines answered in one send) and decodes and encodes with
the same code (`argent_client.protocol`: envelope, typed params, result
Struct), but answers `lease` with a canned `LeaseResult` and `release`
with `{released: true}`, touching no engine, state, event or timer. What
argentd spends above this floor is its engine and its request dispatch.

Two I/O paths, chosen with `--mode`:

- `raw` (default): a non-blocking stdlib socket driven by
  `trio.lowlevel.wait_readable` + `recv`/`send`, the path argentd's
  server uses.
- `streams`: idiomatic `trio.SocketStream` (`receive_some`/`send_all`),
  which spends a failing recv before each wait and extra checkpoints.

Readiness is announced as systemd would see it: `READY=1` to
`$NOTIFY_SOCKET` once the socket listens. Run:
`python bench/floor_server.py --socket /tmp/floor.sock [--mode streams]`.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import msgspec
import trio

from argent_client import protocol as P

RECV_SIZE = 65536

_lease_ids = itertools.count(1)


def answer(line: bytes) -> bytes:
    """The reply line for one request line (no engine behind it)."""
    try:
        req = P.decode_request(line)
        params = P.decode_params(req)
        rid = None if isinstance(req.id, msgspec.UnsetType) else req.id
        if req.method == "lease":
            assert isinstance(params, P.LeaseParams)
            result: msgspec.Struct = P.LeaseResult(
                lease_id=f"floor-{next(_lease_ids)}",
                profile=f"{params.provider}:floor",
                provider=params.provider or "anthropic",
                type="setup-token",
                token="sk-ant-oat01-floor" + "x" * 40,
                label="Floor",
                headers={"Authorization": "Bearer sk-ant-oat01-floor" + "x" * 40,
                         "anthropic-beta": "oauth-2025-04-20"},
                expires_at=4102444800.0,
                source="profile",
            )
        elif req.method == "release":
            result = P.ReleaseResult()
        elif req.method == "hello":
            result = P.HelloResult("floor", "0", P.PROTOCOL_VERSION, os.getpid())
        else:
            raise P.MethodNotFound(f"the floor server does not answer {req.method!r}")
        return P.encode_result(rid, result)
    except P.ArgentError as exc:
        return P.encode_error(None, exc)


def split_lines(buf: bytearray, data: bytes) -> tuple[list[bytes], bytearray]:
    """Append `data` to `buf`; return the complete lines and the rest."""
    buf += data
    if b"\n" not in data:
        return [], buf
    *lines, rest = buf.split(b"\n")
    return [bytes(x) for x in lines if x.strip()], bytearray(rest)


async def serve_raw_conn(sock: socket.socket) -> None:
    """One connection over wait_readable + recv/send, as argentd does it."""
    buf = bytearray()
    try:
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                data = sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                continue
            if not data:
                return
            lines, buf = split_lines(buf, data)
            if not lines:
                continue
            view = memoryview(b"".join(answer(line) for line in lines))
            while view:
                try:
                    n = sock.send(view)
                except (BlockingIOError, InterruptedError):
                    await trio.lowlevel.wait_writable(sock)
                    continue
                view = view[n:]
    except OSError:
        pass
    finally:
        trio.lowlevel.notify_closing(sock)
        sock.close()


async def serve_stream_conn(sock: socket.socket) -> None:
    """One connection over trio.SocketStream, the idiomatic way."""
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    buf = bytearray()
    try:
        async with stream:
            while True:
                data = await stream.receive_some(RECV_SIZE)
                if not data:
                    return
                lines, buf = split_lines(buf, data)
                if lines:
                    await stream.send_all(b"".join(answer(line) for line in lines))
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def notify_ready() -> None:
    """Send READY=1 to $NOTIFY_SOCKET, if set (no sdnotify needed)."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"READY=1", path)


async def serve(path: Path, mode: str) -> None:
    """Listen on `path` and serve every connection until cancelled."""
    handler: Callable[[socket.socket], object] = (
        serve_raw_conn if mode == "raw" else serve_stream_conn
    )
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(4096)
    listener.setblocking(False)
    notify_ready()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        while True:
            await trio.lowlevel.wait_readable(listener)
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                continue
            sock.setblocking(False)
            nursery.start_soon(handler, sock)  # type: ignore[arg-type]


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            scope.cancel()
            return


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve until SIGTERM/SIGINT; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", type=Path, required=True, help="Unix socket to listen on")
    parser.add_argument("--mode", choices=["raw", "streams"], default="raw",
                        help="I/O path (default: raw, as argentd)")
    opts = parser.parse_args(argv)
    trio.run(serve, opts.socket, opts.mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())

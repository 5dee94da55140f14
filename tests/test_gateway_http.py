"""The gateway's HTTP/1.1 on real loopback sockets, in-process: the client side
(`gateway.http`, what a tool's requests meet) and the upstream pool (`gateway.pool`)."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import pytest
import trio

from argentd.gateway.http import Exchange, HttpConnection
from argentd.gateway.pool import NetworkError, Pool, ProtocolError, Timeout, Timeouts, split_url

T = Timeouts(connect=5, read=5, write=5, pool=5)


async def _serve_gateway(handler: Callable[[Exchange], Awaitable[None]],
                         nursery: trio.Nursery) -> int:
    """An `HttpConnection` per connection on 127.0.0.1, port 0; returns the port."""

    async def one(stream: trio.SocketStream) -> None:
        await HttpConnection(stream, header=5, idle=5, write=5).serve(handler)
        await stream.aclose()

    listeners = await nursery.start(trio.serve_tcp, one, 0)
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def _read_until_closed(stream: trio.SocketStream) -> bytes:
    out = b""
    with trio.fail_after(5):
        while data := await stream.receive_some(65536):
            out += data
    return out


async def _echo(ex: Exchange) -> None:
    body = await ex.body(1 << 20)
    await ex.answer(200, [(b"content-type", b"text/plain")], ex.target.encode() + b":" + body)


def _raw(handler: Callable[[Exchange], Awaitable[None]], *requests: bytes) -> list[bytes]:
    """Each of `requests` sent on a connection of its own; what came back, to the close."""
    out: list[bytes] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await _serve_gateway(handler, nursery)
            for request in requests:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(request)
                out.append(await _read_until_closed(stream))
            nursery.cancel_scope.cancel()

    trio.run(main)
    return out


def test_http_pipelined_requests_are_answered_in_order_on_one_connection() -> None:
    [out] = _raw(_echo, b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi"
                        b"GET /b HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    first, second = out.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 OK\r\n") and first.endswith(b"\r\n\r\n/a:hi")
    assert b"connection: close" not in first
    assert second.endswith(b"connection: close\r\n\r\n/b:")


def test_http_streamed_answer_is_chunked_for_1_1_and_ends_the_connection_for_1_0() -> None:
    async def stream_back(ex: Exchange) -> None:
        await ex.body(100)
        await ex.start(200, [(b"content-type", b"text/event-stream")])
        await ex.send(b"one")
        await ex.end(b"two")

    out11, out10 = _raw(stream_back, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
                        b"GET / HTTP/1.0\r\n\r\n")
    assert b"transfer-encoding: chunked\r\n" in out11
    assert out11.endswith(b"\r\n\r\n3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n")
    assert b"chunked" not in out10 and b"connection: close\r\n" in out10
    assert out10.endswith(b"\r\n\r\nonetwo")


def test_http_head_gets_the_headers_and_no_body() -> None:
    [out] = _raw(_echo, b"HEAD /h HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert b"content-length: 3\r\n" in out and out.endswith(b"\r\n\r\n")


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (70 * 1024) + b"\r\n\r\n", b"431"),
    (b"\x16\x03\x01 not http at all\r\n\r\n", b"400"),
    (b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
     b"400"),
])
def test_http_unreadable_request_gets_an_answer_and_the_connection_ends(
        request_bytes: bytes, status: bytes) -> None:
    seen: list[str] = []

    async def handler(ex: Exchange) -> None:
        seen.append(ex.target)
        await _echo(ex)

    [out] = _raw(handler, request_bytes)
    assert out.startswith(b"HTTP/1.1 " + status), out[:80]
    assert b"connection: close\r\n" in out
    assert seen == []


def test_http_expect_continue_and_an_unread_body_closes_after_the_answer() -> None:
    async def refuse(ex: Exchange) -> None:
        if ex.target == "/refuse":
            await ex.answer(401, [], b"no")
        else:
            await _echo(ex)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await _serve_gateway(refuse, nursery)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"POST /c HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n"
                                  b"content-length: 2\r\n\r\n")
            with trio.fail_after(5):
                got = await stream.receive_some(65536)
            assert got == b"HTTP/1.1 100 Continue\r\n\r\n"
            await stream.send_all(b"ok")
            with trio.fail_after(5):
                got = await stream.receive_some(65536)
            assert got.endswith(b"/c:ok") and b"connection: close" not in got
            await stream.send_all(b"POST /refuse HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n")
            out = await _read_until_closed(stream)  # closed: the body was never read
            assert out.startswith(b"HTTP/1.1 401 ") and b"connection: close\r\n" in out
            nursery.cancel_scope.cancel()

    trio.run(main)


# ------------------------------------------------------------------ the upstream pool

Script = Callable[[int, bytes], bytes | None]
"""(request number on this connection, the request) -> the answer, or None: close
(b"hang": never answer; b"close:" + answer: answer, then close)."""


async def _upstream(script: Script, nursery: trio.Nursery, conns: list[int]) -> str:
    """A scripted HTTP/1.1 upstream on 127.0.0.1; `conns` counts its connections."""

    async def one(stream: trio.SocketStream) -> None:
        conns.append(1)
        buf, n = b"", 0
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                while len(buf) < length:
                    buf += await stream.receive_some(65536)
                request, buf = head + b"\r\n\r\n" + buf[:length], buf[length:]
                answer = script(n, request)
                n += 1
                if answer is None:
                    return
                if answer == b"hang":
                    await trio.sleep_forever()
                if answer.startswith(b"close:"):
                    await stream.send_all(answer[6:])
                    return
                await stream.send_all(answer)
        except trio.BrokenResourceError:
            return
        finally:
            await stream.aclose()

    listeners = await nursery.start(trio.serve_tcp, one, 0)
    return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


async def _get(pool: Pool, url: str, t: Timeouts = T) -> tuple[int, bytes]:
    async with pool.stream("POST", url, headers=[(b"x-api-key", b"k")], content=b"{}",
                           timeouts=t) as resp:
        body = b"".join([part async for part in resp.aiter_stream()])
        return resp.status, body


def test_pool_keeps_a_connection_alive_and_reads_chunked_and_eof_bodies() -> None:
    def script(n: int, request: bytes) -> bytes | None:
        assert request.startswith(b"POST /v1/x?q=1 HTTP/1.1\r\nhost: 127.0.0.1:")
        assert request.endswith(b"x-api-key: k\r\ncontent-length: 2\r\n\r\n{}")
        if n == 1:
            return (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                    b"2\r\nab\r\n1\r\nc\r\n0\r\n\r\n")
        if n == 2:
            return b"close:HTTP/1.1 201 Created\r\n\r\nto the end"  # ends with the connection
        return OK

    async def main() -> None:
        conns: list[int] = []
        async with trio.open_nursery() as nursery:
            url = await _upstream(script, nursery, conns) + "/v1/x?q=1"
            pool = Pool(4)
            assert await _get(pool, url) == (200, b"ok")
            assert await _get(pool, url) == (200, b"abc")
            assert await _get(pool, url) == (201, b"to the end")
            assert len(conns) == 1
            assert await _get(pool, url) == (200, b"ok")  # the last one could not be kept
            assert len(conns) == 2
            await pool.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_pool_retries_once_when_a_kept_connection_was_closed_as_it_sent() -> None:
    def closes_after_one(n: int, request: bytes) -> bytes | None:
        return OK if n == 0 else None  # reads the second request, closes without an answer

    async def main() -> None:
        conns: list[int] = []
        async with trio.open_nursery() as nursery:
            url = await _upstream(closes_after_one, nursery, conns)
            pool = Pool(4)
            assert await _get(pool, url) == (200, b"ok")
            assert await _get(pool, url) == (200, b"ok")  # the retry, on a new connection
            assert len(conns) == 2
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_pool_faults_are_typed() -> None:
    def script(n: int, request: bytes) -> bytes | None:
        if b"/garbage" in request:
            return b"SMTP ready\r\n\r\n"
        if b"/hang" in request:
            return b"hang"
        if b"/short" in request:
            return None
        return b"close:HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf"

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            url = await _upstream(script, nursery, [])
            pool = Pool(4)
            with pytest.raises(ProtocolError):
                await _get(pool, url + "/garbage")
            with pytest.raises(Timeout):
                await _get(pool, url + "/hang", Timeouts(connect=5, read=0.2, write=5, pool=5))
            with pytest.raises(NetworkError):
                await _get(pool, url + "/short")  # closed before any answer, a new connection
            with pytest.raises(NetworkError):
                await _get(pool, url + "/cut")  # closed inside a body of announced length
            with pytest.raises(NetworkError):
                await _get(pool, "http://127.0.0.1:1/")  # refused
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_pool_limit_waits_for_a_free_connection_then_times_out() -> None:
    async def main() -> None:
        hang_seen = trio.Event()

        def script(n: int, request: bytes) -> bytes | None:
            if b"/hang" in request:
                hang_seen.set()
                return b"hang"
            return OK

        async with trio.open_nursery() as nursery:
            url = await _upstream(script, nursery, [])
            other = await _upstream(lambda n, r: OK, nursery, [])
            pool = Pool(1)
            assert await _get(pool, other) == (200, b"ok")  # idle, for another origin
            assert await _get(pool, url) == (200, b"ok")  # evicts it: one slot in all

            async def hold() -> None:
                await _get(pool, url + "/hang")  # takes the one connection, never answered

            nursery.start_soon(hold)
            await hang_seen.wait()
            with pytest.raises(Timeout):
                await _get(pool, other, Timeouts(connect=5, read=5, write=5, pool=0.2))
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_pool_speaks_tls_verified_and_keeps_the_connection() -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    conns: list[int] = []

    async def serve(tcp: trio.SocketStream) -> None:
        conns.append(1)
        stream = trio.SSLStream(tcp, server_ctx, server_side=True)
        buf = b""
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buf += data
                while b"{}" in buf:  # each request ends with its body, b"{}"
                    _, _, buf = buf.partition(b"{}")
                    await stream.send_all(OK)
        except trio.BrokenResourceError:
            return

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(trio.serve_tcp, serve, 0)
            url = f"https://127.0.0.1:{listeners[0].socket.getsockname()[1]}/v1/x"
            pool = Pool(4, tls=trusting)
            assert await _get(pool, url) == (200, b"ok")
            assert await _get(pool, url) == (200, b"ok")
            assert len(conns) == 1
            with pytest.raises(NetworkError):  # certifi's CAs do not know this one
                await _get(Pool(4), url)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_split_url() -> None:
    origin, target = split_url("https://api.example.com/v1/m?x=1")
    assert (origin.scheme, origin.host, origin.port, target) == (
        "https", "api.example.com", 443, b"/v1/m?x=1")
    assert origin.authority == b"api.example.com"
    origin, target = split_url("http://[::1]:8080")
    assert (origin.host, origin.port, target, origin.authority) == ("::1", 8080, b"/",
                                                                     b"[::1]:8080")
    for bad in ("ftp://x/", "http:///x", "nothing"):
        with pytest.raises(ValueError):
            split_url(bad)


def test_reads_that_find_data_at_once_still_let_other_tasks_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Reads go straight to the socket while it has data (no scheduler pass each):
    # a body that keeps coming must not keep every other task of the daemon waiting.
    from argentd.gateway import sockread

    monkeypatch.setattr(sockread, "RECV_SIZE", 1)
    reads = 64
    ran: dict[str, int] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = (await nursery.start(trio.serve_tcp, _echo_bytes, 0))[0].socket.getsockname()[1]
            for side in ("client", "upstream"):
                a = await trio.open_tcp_stream("127.0.0.1", port)
                await a.send_all(b"x" * reads)
                # All of the echo in this socket's buffer first: then no read waits.
                while len(await a.socket.recv(reads, socket.MSG_PEEK)) < reads:
                    await trio.sleep(0.001)
                others = 0

                async def other() -> None:
                    nonlocal others
                    while True:
                        others += 1
                        await trio.lowlevel.checkpoint()

                async with trio.open_nursery() as inner:
                    inner.start_soon(other)
                    await trio.lowlevel.checkpoint()  # `other` has run once
                    others = 0
                    got = await _read_n(side, a, reads)
                    inner.cancel_scope.cancel()
                assert got == b"x" * reads
                ran[side] = others
                await a.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert sockread.UNYIELDED_READS <= 16  # a yield at least every 16 reads
    for side in ("client", "upstream"):
        assert ran[side] >= reads // sockread.UNYIELDED_READS - 1, ran


async def _echo_bytes(stream: trio.SocketStream) -> None:
    """Echo what arrives; the connection stays open until the client closes it."""
    while data := await stream.receive_some(65536):
        await stream.send_all(data)


async def _read_n(side: str, stream: trio.SocketStream, n: int) -> bytes:
    """`n` one-byte reads of the echo, through the gateway's client-side or upstream read."""
    from argentd.gateway import pool as pool_mod

    out = b""
    if side == "client":
        conn = HttpConnection(stream, header=5, idle=5, write=5)
        while len(out) < n:
            out += await conn._read_socket(5)
    else:
        c = pool_mod._Conn(pool_mod.Origin("http", "127.0.0.1", 1), stream,
                           stream.socket)
        while len(out) < n:
            out += await pool_mod._receive(c, 5)
    return out
